//! Elementwise operators: the binary kernel (a constant operand broadcast
//! and quantised into the program; a run-time operand with one value per
//! row broadcast by the vector unit, one that broadcasts otherwise first
//! expanded by DMA); with a constant scalar operand, and unary functions,
//! a lookup table computed by evaluating the IR op itself.

use m4c_ir::{Op, ValueId};
use m4c_npu::kernels::{eltwise, gather, lut};
use m4c_npu::module::Binding;
use m4c_ops::{eval_op, Value};

use m4c_npu::kernels::Quant;

use super::{constant, dims, floats, symmetric, Ctx};

/// When `from` broadcast to `to` gives one value per row of `to` viewed
/// as `[prod(to[..k]), prod(to[k..])]` (`from` equals `to` up to axis `k`,
/// then is 1): that `k`.
fn per_row(from: &[usize], to: &[usize]) -> Option<usize> {
    let pad = to.len().checked_sub(from.len())?;
    let full: Vec<usize> = std::iter::repeat_n(1, pad)
        .chain(from.iter().copied())
        .collect();
    let k = full.iter().rposition(|&d| d != 1).map_or(0, |p| p + 1);
    (full != to && full[..k] == to[..k]).then_some(k)
}

/// A constant operand's quantisation and int8 codes, next to a run-time
/// operand quantised as `other` (given when the constant holds mask
/// sentinels), giving a result quantised as `y`:
/// symmetric over its values — except a mask (an `Add` of a constant
/// holding sentinels: `finfo(float32).min`-like, |x| ≥ `MASK_MAGNITUDE`,
/// or below the ordinary values calibration saw, as `-1e9` masks are):
/// its sentinels become ∓128/127 at a scale large enough that the sum
/// leaves the result's range, so a masked result saturates to its lowest
/// code as `-inf` does (the result is calibrated so that code means the
/// mask).
fn constant_codes(
    full: &[f64],
    sentinel: &dyn Fn(f64) -> bool,
    elt: eltwise::EltOp,
    other: Option<Quant>,
    y: Quant,
) -> (Quant, Vec<i8>) {
    let ordinary = full
        .iter()
        .filter(|x| !sentinel(**x))
        .fold(0.0, |m: f64, x| m.max(x.abs()));
    let (eltwise::EltOp::Add, Some(other)) = (elt, other) else {
        let q = symmetric(full.iter().fold(0.0, |m: f64, x| m.max(x.abs())));
        return (q, full.iter().map(|&x| q.quantize(x)).collect());
    };
    // 128 codes of the constant must outweigh the other operand's largest
    // value and the whole of the result's range below its zero point.
    let reach = 127.0 * other.scale + f64::from(128 + y.zero_point) * y.scale;
    let scale = (ordinary / 127.0).max(1.01 * reach / 128.0);
    let q = Quant {
        scale,
        zero_point: 0,
    };
    let codes = full
        .iter()
        .map(|&x| match x {
            x if sentinel(x) && x < 0.0 => -128,
            x if sentinel(x) => 127,
            x => q.quantize(x),
        })
        .collect();
    (q, codes)
}

impl Ctx<'_> {
    /// Tensor `t` (value `v`) broadcast to `out`'s shape by a DMA
    /// pattern, or `t` itself when the shapes agree.
    fn expanded(&mut self, v: ValueId, t: usize, out: ValueId) -> Result<usize, String> {
        let (from, to) = (dims(self.g, v), dims(self.g, out));
        if from == to {
            return Ok(t);
        }
        let expand = Op::Expand { shape: to.clone() };
        let ops = gather::GatherOperands {
            sources: vec![vec![0; from.iter().product()]],
            row_len: to.last().copied().unwrap_or(1).max(1),
            rows: crate::movement::pieces(&expand, std::slice::from_ref(&from), &to)?,
        };
        let k = gather::generate(&ops, self.config).map_err(|e| e.to_string())?;
        let q = self.quant(v)?;
        let name = format!("{}/expanded", self.g.value(v).name);
        let e = self.add_tensor(&name, to.iter().product(), q);
        self.whole(out, "dma-expand", k, &[t], e);
        Ok(e)
    }

    pub(super) fn elementwise(
        &mut self,
        op: &Op,
        ins: &[ValueId],
        out: ValueId,
        rows: usize,
        cols: usize,
    ) -> Result<(), String> {
        let g = self.g;
        let n = rows * cols;
        let err = |e: m4c_npu::kernels::KernelError| e.to_string();
        let qy = self.quant(out)?;
        let consts: Vec<Option<Value>> = ins.iter().map(|&v| constant(g, v)).collect();
        let scalar = consts.iter().flatten().any(|c| c.len() == 1);
        let elt = match op {
            Op::Add => Some(eltwise::EltOp::Add),
            Op::Sub => Some(eltwise::EltOp::Sub),
            Op::Mul => Some(eltwise::EltOp::Mul),
            Op::Max => Some(eltwise::EltOp::Max),
            Op::Min => Some(eltwise::EltOp::Min),
            _ => None,
        };
        match elt {
            Some(elt) if ins.len() == 2 && !scalar => {
                // A run-time operand with one value per row (of `out`
                // viewed as rows' x cols') is broadcast by the vector unit;
                // it goes second.
                let out_shape = dims(g, out);
                let row_bcast = (0..2).rev().find_map(|i| {
                    let commutes = i == 1 || elt != eltwise::EltOp::Sub;
                    let other_full = dims(g, ins[1 - i]) == out_shape;
                    let ok = consts[i].is_none() && commutes && other_full;
                    ok.then(|| per_row(&dims(g, ins[i]), &out_shape))
                        .flatten()
                        .map(|k| (i, k))
                });
                let (order, rows, cols) = match row_bcast {
                    Some((i, k)) => {
                        let r = out_shape[..k].iter().product::<usize>();
                        ([1 - i, i], r, n / r.max(1))
                    }
                    None => ([0, 1], rows, cols),
                };
                let lens = [n, if row_bcast.is_some() { rows } else { n }];
                let mut ts = vec![];
                let mut data = [vec![0i8; lens[0]], vec![0i8; lens[1]]];
                let mut quants = [qy; 3];
                for (slot, &i) in order.iter().enumerate() {
                    let v = ins[i];
                    if let Some(c) = &consts[i] {
                        let zeros = Value::F32(ndarray::ArrayD::zeros(out_shape.clone()));
                        let full =
                            floats(&eval_op(&Op::Add, &[c, &zeros]).map_err(|e| e.to_string())?);
                        let name = &g.value(v).name;
                        let sentinel = |x| self.cal.is_sentinel(name, x);
                        let masked = full.iter().any(|&x| sentinel(x));
                        let other = match masked {
                            true => Some(self.quant(ins[1 - i])?),
                            false => None,
                        };
                        let (q, codes) = constant_codes(&full, &sentinel, elt, other, qy);
                        quants[slot] = q;
                        data[slot] = codes;
                    } else {
                        quants[slot] = self.quant(v)?;
                        let t = self.tensor(v)?;
                        let t = match row_bcast {
                            Some(_) => t,
                            None => self.expanded(v, t, out)?,
                        };
                        ts.push((slot, t));
                    }
                }
                let [a, b] = data;
                let ops = eltwise::BinaryOperands {
                    op: elt,
                    rows,
                    cols,
                    a,
                    b,
                    quant: quants,
                };
                let k = eltwise::generate(&ops, self.config).map_err(err)?;
                let y = self.result(out, qy);
                let bindings = ts
                    .iter()
                    .map(|&(slot, t)| Binding {
                        tensor: t,
                        offset: 0,
                        len: lens[slot],
                        addr: k.inputs[slot],
                    })
                    .collect();
                let output = Binding {
                    tensor: y,
                    offset: 0,
                    len: n,
                    addr: k.out_addr,
                };
                let tile_rows = k.tile_rows;
                let p = self.program(k.program);
                let name = format!("eltwise-{}", op.kind().name().to_lowercase());
                self.layer(out, &name, (p, tile_rows), bindings, output);
            }
            _ => {
                let x_index = consts
                    .iter()
                    .position(Option::is_none)
                    .ok_or("no run-time operand")?;
                let qx = self.quant(ins[x_index])?;
                let grid = Value::F32(ndarray::ArrayD::from_shape_fn(vec![256], |i| {
                    qx.dequantize((i[0] as i32 - 128) as i8) as f32
                }));
                let args: Vec<&Value> =
                    consts.iter().map(|c| c.as_ref().unwrap_or(&grid)).collect();
                let f = floats(&eval_op(op, &args).map_err(|e| e.to_string())?);
                if f.len() != 256 {
                    return Err(format!("lookup table of {} entries", f.len()));
                }
                let table: [i8; 256] = std::array::from_fn(|i| qy.quantize(f[i]));
                let x = self.tensor(ins[x_index])?;
                let name = format!("lut-{}", op.kind().name().to_lowercase());
                let y = self.table_layer(out, x, &table, (rows, cols), &name)?;
                self.tensor_of.insert(out, y);
            }
        }
        Ok(())
    }

    /// A lookup-table layer computing `out` from tensor `x` (`rows` ×
    /// `cols`) by `table`, named `kernel`: its result tensor.
    pub(super) fn table_layer(
        &mut self,
        out: ValueId,
        x: usize,
        table: &[i8; 256],
        (rows, cols): (usize, usize),
        kernel: &str,
    ) -> Result<usize, String> {
        let k = lut::generate_table(table, rows, cols, &vec![0; rows * cols], self.config)
            .map_err(|e| e.to_string())?;
        let q = self.quant(out)?;
        let y = self.add_tensor(&self.g.value(out).name.clone(), rows * cols, q);
        self.whole(out, kernel, k, &[x], y);
        Ok(y)
    }
}

#[cfg(test)]
mod tests {
    use super::per_row;

    #[test]
    fn per_row_broadcasts() {
        // A squeeze-excite scale [1, C, 1, 1] over [1, C, H, W]: C rows.
        assert_eq!(per_row(&[1, 8, 1, 1], &[1, 8, 4, 4]), Some(2));
        // An attention mask [B, 1, 1, S] over [B, H, S, S] is not per row.
        assert_eq!(per_row(&[2, 1, 1, 5], &[2, 3, 5, 5]), None);
        assert_eq!(per_row(&[4, 1], &[4, 6]), Some(1));
        assert_eq!(per_row(&[1], &[3, 6]), Some(0));
        assert_eq!(per_row(&[3, 6], &[3, 6]), None);
    }
}
