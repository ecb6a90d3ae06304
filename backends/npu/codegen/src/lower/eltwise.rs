//! Elementwise operators: the binary kernel (a constant operand broadcast
//! and quantised into the program, a run-time operand that broadcasts
//! first expanded by DMA); with a constant scalar operand, and unary
//! functions, a lookup table computed by evaluating the IR op itself.

use m4c_ir::{Op, ValueId};
use m4c_npu::kernels::{eltwise, gather, lut};
use m4c_npu::module::Binding;
use m4c_ops::{eval_op, Value};

use super::{constant, dims, floats, symmetric, Ctx};

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
                let mut ts = vec![];
                let mut data = [vec![0i8; n], vec![0i8; n]];
                let mut quants = [qy; 3];
                for (i, &v) in ins.iter().enumerate() {
                    if let Some(c) = &consts[i] {
                        let zeros = Value::F32(ndarray::ArrayD::zeros(dims(g, out)));
                        let full =
                            floats(&eval_op(&Op::Add, &[c, &zeros]).map_err(|e| e.to_string())?);
                        quants[i] = symmetric(full.iter().fold(0.0, |m: f64, x| m.max(x.abs())));
                        data[i] = full.iter().map(|&x| quants[i].quantize(x)).collect();
                    } else {
                        quants[i] = self.quant(v)?;
                        let t = self.tensor(v)?;
                        ts.push((i, self.expanded(v, t, out)?));
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
                    .map(|&(i, t)| Binding {
                        tensor: t,
                        offset: 0,
                        len: n,
                        addr: k.inputs[i],
                    })
                    .collect();
                let output = Binding {
                    tensor: y,
                    offset: 0,
                    len: n,
                    addr: k.out_addr,
                };
                let p = self.program(k.program);
                let name = format!("eltwise-{}", op.kind().name().to_lowercase());
                self.layer(out, &name, p, bindings, output);
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
                let k = lut::generate_table(&table, rows, cols, &vec![0; n], self.config)
                    .map_err(err)?;
                let y = self.result(out, qy);
                let name = format!("lut-{}", op.kind().name().to_lowercase());
                self.whole(out, &name, k, &[x], y);
            }
        }
        Ok(())
    }
}
