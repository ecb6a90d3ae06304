//! Elementwise binary int8 operations with requantisation (add, sub, mul,
//! max, min of two tensors with their own quantisation), one `vbin` per
//! tile. Add/sub/max/min first bring both inputs to a common scale with 20
//! extra fractional bits (as TFLite's quantised add does), then rescale to
//! the output; mul multiplies the zero-point-corrected integers exactly.
//! The dequantised output is within half an output step of the real result
//! (clamped to the output's range) plus the fixed-point rounding: for
//! add/sub/max/min `6 * max(scale_a, scale_b) * 2^-20` (both pre-scales and
//! the output multiply's first rounding), for mul `scale_a * scale_b` (the
//! output multiply rounds to `2^shift` output steps before its final shift).
//! The second input may hold one value per row, broadcast along the row
//! by `vbin`'s `bcast` (a squeeze-excite scale, a per-channel gate): no
//! DMA expansion.

use super::data::{i8_bytes, SplitMix64};
use super::stream::{self, StreamKernel, StreamShape};
use super::vector::{self, Operand};
use super::{scale_of, KernelError, KernelProgram, ProgramBuilder, Quant};
use crate::config::MachineConfig;
use crate::fixed::Prescale;
use crate::quant::Requant;
use crate::sim::BinOp;

/// Fractional bits added to the common scale of add/sub/max/min.
const LEFT_SHIFT: i32 = 20;

/// An elementwise binary operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EltOp {
    /// a + b.
    Add,
    /// a - b.
    Sub,
    /// a * b.
    Mul,
    /// max(a, b).
    Max,
    /// min(a, b).
    Min,
}

impl EltOp {
    /// The operation called `name` (`add`, `sub`, `mul`, `max`, `min`).
    pub fn parse(name: &str) -> Result<EltOp, KernelError> {
        Ok(match name {
            "add" => EltOp::Add,
            "sub" => EltOp::Sub,
            "mul" => EltOp::Mul,
            "max" => EltOp::Max,
            "min" => EltOp::Min,
            _ => return Err(KernelError::BadShape(format!("unknown operation `{name}`"))),
        })
    }

    /// The operation on reals.
    pub fn eval(self, a: f64, b: f64) -> f64 {
        match self {
            EltOp::Add => a + b,
            EltOp::Sub => a - b,
            EltOp::Mul => a * b,
            EltOp::Max => a.max(b),
            EltOp::Min => a.min(b),
        }
    }

    fn vector_op(self) -> BinOp {
        match self {
            EltOp::Add => BinOp::Add,
            EltOp::Sub => BinOp::Sub,
            EltOp::Mul => BinOp::Mul,
            EltOp::Max => BinOp::Max,
            EltOp::Min => BinOp::Min,
        }
    }
}

/// Operands of one elementwise binary layer (same shapes, row-major).
#[derive(Clone, Debug)]
pub struct BinaryOperands {
    /// The operation.
    pub op: EltOp,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// First input.
    pub a: Vec<i8>,
    /// Second input: `rows x cols`, or `rows` values (one per row,
    /// broadcast along it).
    pub b: Vec<i8>,
    /// Quantisation of `a`, `b` and the output.
    pub quant: [Quant; 3],
}

/// Pre-scales of both inputs and the output stage.
fn params(ops: &BinaryOperands) -> Result<(Prescale, Prescale, Requant), KernelError> {
    for (q, what) in ops.quant.iter().zip(["a", "b", "output"]) {
        q.check(what)?;
    }
    let [qa, qb, qo] = ops.quant;
    let pre = |q: Quant, scale: Option<f64>| -> Result<Prescale, KernelError> {
        let (multiplier, shift) = match scale {
            Some(s) => scale_of(s, "input")?,
            None => (0, 0),
        };
        Ok(Prescale {
            offset: -q.zero_point,
            multiplier,
            shift,
        })
    };
    let (pa, pb, out_scale) = if ops.op == EltOp::Mul {
        (
            pre(qa, None)?,
            pre(qb, None)?,
            qa.scale * qb.scale / qo.scale,
        )
    } else {
        let twice = 2.0 * qa.scale.max(qb.scale);
        let unit = (1i64 << LEFT_SHIFT) as f64;
        (
            pre(qa, Some(qa.scale / twice * unit))?,
            pre(qb, Some(qb.scale / twice * unit))?,
            twice / (unit * qo.scale),
        )
    };
    let (multiplier, shift) = scale_of(out_scale, "output")?;
    let out = Requant {
        multiplier,
        shift,
        zero_point: qo.zero_point,
        clamp_min: -128,
        clamp_max: 127,
    };
    Ok((pa, pb, out))
}

impl BinaryOperands {
    /// Random operands from `seed` with scales near 0.05.
    pub fn random(op: EltOp, rows: usize, cols: usize, seed: u64) -> BinaryOperands {
        let mut rng = SplitMix64::new(seed);
        let mut quant = || Quant {
            scale: 0.02 + (rng.next_u64() % 1000) as f64 * 1e-4,
            zero_point: (rng.next_u64() % 21) as i32 - 10,
        };
        let mut q = [quant(), quant(), quant()];
        if op == EltOp::Mul {
            q[2].scale *= 20.0;
        }
        let mut rng = SplitMix64::new(seed ^ 0x5eed);
        BinaryOperands {
            op,
            rows,
            cols,
            a: rng.i8s(rows * cols),
            b: rng.i8s(rows * cols),
            quant: q,
        }
    }

    /// The reference: the same integer arithmetic per element.
    pub fn reference(&self) -> Result<Vec<i8>, KernelError> {
        let (pa, pb, out) = params(self)?;
        let op = self.op.vector_op();
        let per_row = self.b.len() != self.a.len();
        let cols = self.cols.max(1);
        Ok(self
            .a
            .iter()
            .enumerate()
            .map(|(i, &x)| (x, self.b[if per_row { i / cols } else { i }]))
            .map(|(x, y)| {
                let (x, y) = (pa.apply(x as i32), pb.apply(y as i32));
                let t = match op {
                    BinOp::Add => x.wrapping_add(y),
                    BinOp::Sub => x.wrapping_sub(y),
                    BinOp::Mul => x.wrapping_mul(y),
                    BinOp::Max => x.max(y),
                    _ => x.min(y),
                };
                out.apply(t)
            })
            .collect())
    }
}

/// Generates the elementwise program for `config`.
pub fn generate(
    ops: &BinaryOperands,
    config: &MachineConfig,
) -> Result<KernelProgram, KernelError> {
    let (pa, pb, out) = params(ops)?;
    let (rows, cols) = (ops.rows, ops.cols);
    let n = rows * cols;
    let per_row = ops.b.len() == rows && ops.b.len() != n;
    if cols == 0 || ops.a.len() != n || !(per_row || ops.b.len() == n) {
        return Err(KernelError::BadShape(format!(
            "{rows}x{cols} with {} and {} inputs",
            ops.a.len(),
            ops.b.len()
        )));
    }
    let shape = StreamShape {
        rows,
        in_row_bytes: cols + if per_row { 1 } else { cols },
        out_row_bytes: cols,
        acc_per_row: 0,
        const_bytes: 0,
    };
    let tile_rows = stream::tile_rows(config, &shape)?;
    let mut b = ProgramBuilder::default();
    let a_dram = b.alloc_data(i8_bytes(&ops.a))?;
    let b_dram = b.alloc_data(i8_bytes(&ops.b))?;
    let out_dram = b.alloc(n)?;
    let b_panel = (tile_rows * cols) as u64;
    let load = |b: &mut ProgramBuilder, t: &stream::Tile| {
        stream::load_rows(b, a_dram, cols, &t.rows, t.input, cols)?;
        let b_cols = if per_row { 1 } else { cols };
        stream::load_rows(b, b_dram, b_cols, &t.rows, t.input + b_panel, b_cols)
    };
    let compute = |b: &mut ProgramBuilder, t: &stream::Tile| {
        vector::strides(b, cols, cols, if per_row { 1 } else { cols })?;
        vector::prescale(b, pa, pb)?;
        vector::requant(b, &out)?;
        let (x, y) = (Operand::Act(t.input), Operand::Act(t.input + b_panel));
        let dst = Operand::Act(t.output);
        let op = ops.op.vector_op();
        vector::binary(b, op, dst, x, y, t.rows.len(), cols, per_row)
    };
    let kernel = StreamKernel {
        load_consts: &|_| Ok(()),
        load: &load,
        compute: &compute,
        store: &|b, t| stream::store_rows(b, out_dram, cols, t),
    };
    stream::emit(&mut b, &shape, tile_rows, &kernel)?;
    Ok(KernelProgram {
        program: b.finish()?,
        out_addr: out_dram,
        out_len: n,
        inputs: vec![a_dram, b_dram],
        tile_rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{simulate, SimOptions};

    /// One `b` per row (vbin's `bcast`) gives, on the simulator, what the
    /// same operation on `b` expanded along the rows gives.
    #[test]
    fn a_per_row_operand_matches_its_expansion() {
        let config = MachineConfig::edge_small();
        for (op, rows, cols) in [
            (EltOp::Mul, 24, 49),
            (EltOp::Add, 7, 300),
            (EltOp::Max, 130, 3),
        ] {
            let full = BinaryOperands::random(op, rows, cols, 11);
            let per_row = BinaryOperands {
                b: full.b[..rows].to_vec(),
                ..full.clone()
            };
            let expanded = BinaryOperands {
                b: (0..rows * cols).map(|i| per_row.b[i / cols]).collect(),
                ..full
            };
            let k = generate(&per_row, &config).unwrap();
            let r = simulate(&k.program, &config, SimOptions::default()).unwrap();
            assert_eq!(k.output(&r.dram), expanded.reference().unwrap(), "{op:?}");
            assert_eq!(per_row.reference().unwrap(), expanded.reference().unwrap());
        }
    }
}
