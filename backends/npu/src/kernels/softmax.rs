//! int8 softmax over the rows of a matrix, entirely on the vector unit:
//! row max, `x - max` rescaled into the log2 domain (Q16), exp2 on the
//! special-function unit, row sum, reciprocal, Q31 multiply, requantise to
//! the output quantisation the caller asks for ([`OUTPUT`], scale 1/256
//! and zero point -128, is the usual one; a compiler gives the calibrated
//! one, whose finer steps keep the probabilities of long rows — 1/1500
//! each over a flat row of 1500 — from rounding to zero).
//!
//! With `F = 30 - ceil(log2(cols))` fractional bits for the exponentials
//! (so that a row sum fits int32), the dequantised output is within
//! `scale/2 + cols * 2^ceil(log2(cols)) / 2^31 + 2^-14` of the real softmax
//! of the dequantised input: half an output step, the exponentials'
//! rounding summed over a row, and the log2-domain input rounding. For
//! rows of at most 1024 and [`OUTPUT`] that is below 1/255.

use super::data::{i8_bytes, SplitMix64};
use super::stream::{self, StreamKernel, StreamShape, Tile};
use super::vector::{self, Operand, Reduce, Special};
use super::{ceil_log2, scale_of, KernelError, KernelProgram, ProgramBuilder, Quant};
use crate::config::MachineConfig;
use crate::fixed::{exp2, reciprocal, round_shift_saturate, Prescale};
use crate::quant::{
    multiply_by_quantized_multiplier, saturating_rounding_doubling_high_mul, Requant,
};
use crate::sim::BinOp;

/// The output quantisation of softmax: probabilities in steps of 1/256.
pub const OUTPUT: Quant = Quant {
    scale: 1.0 / 256.0,
    zero_point: -128,
};

/// A softmax layer's input.
#[derive(Clone, Debug)]
pub struct SoftmaxOperands {
    /// Rows (independent softmaxes).
    pub rows: usize,
    /// Elements per row.
    pub cols: usize,
    /// Input, rows x cols.
    pub x: Vec<i8>,
    /// Input quantisation (only the scale matters: softmax is shift invariant).
    pub input: Quant,
    /// Output quantisation (usually [`OUTPUT`]).
    pub output: Quant,
}

/// The integer parameters both the generator and the reference use.
#[derive(Clone, Copy, Debug)]
struct Params {
    /// `x - max` to Q16 log2 units: scale `s * log2(e) * 2^16`.
    to_log2: (i32, i32),
    /// Fractional bits of the exponentials.
    frac: u32,
    /// Output stage: the Q31 product is `p * 2^(F - 1)`; it is scaled by
    /// `2^(1 - F) / output.scale` onto the output's zero point.
    out: Requant,
}

impl Params {
    fn new(ops: &SoftmaxOperands) -> Result<Params, KernelError> {
        ops.input.check("softmax input")?;
        ops.output.check("softmax output")?;
        if ops.rows == 0 || ops.cols == 0 || ops.x.len() != ops.rows * ops.cols {
            return Err(KernelError::BadShape(format!(
                "softmax {}x{} with {} inputs",
                ops.rows,
                ops.cols,
                ops.x.len()
            )));
        }
        if ops.cols > 1 << 16 {
            return Err(KernelError::BadShape(
                "softmax rows longer than 65536".into(),
            ));
        }
        let frac = 30 - ceil_log2(ops.cols);
        let scale = ops.input.scale * std::f64::consts::LOG2_E * 65536.0;
        let out_scale = 2f64.powi(1 - frac as i32) / ops.output.scale;
        let (m, s) = scale_of(out_scale, "softmax output")?;
        Ok(Params {
            to_log2: scale_of(scale, "softmax input")?,
            frac,
            out: Requant {
                multiplier: m,
                shift: s,
                zero_point: ops.output.zero_point,
                clamp_min: -128,
                clamp_max: 127,
            },
        })
    }
}

impl SoftmaxOperands {
    /// Random operands from `seed` with input scale `scale`.
    pub fn random(rows: usize, cols: usize, scale: f64, seed: u64) -> SoftmaxOperands {
        let mut rng = SplitMix64::new(seed);
        SoftmaxOperands {
            rows,
            cols,
            x: rng.i8s(rows * cols),
            input: Quant {
                scale,
                zero_point: (rng.next_u64() % 11) as i32 - 5,
            },
            output: OUTPUT,
        }
    }

    /// The reference: the same integer arithmetic, row by row.
    pub fn reference(&self) -> Result<Vec<i8>, KernelError> {
        let p = Params::new(self)?;
        let mut out = Vec::with_capacity(self.x.len());
        for row in self.x.chunks(self.cols) {
            let max = row.iter().map(|&v| v as i32).max().unwrap_or(0);
            let e: Vec<i32> = row
                .iter()
                .map(|&v| {
                    let d =
                        multiply_by_quantized_multiplier(v as i32 - max, p.to_log2.0, p.to_log2.1);
                    exp2(d as i64, p.frac)
                })
                .collect();
            let sum = round_shift_saturate(e.iter().map(|&v| v as i128).sum(), 0);
            let r = reciprocal(sum as i64, p.frac + 30);
            out.extend(
                e.iter()
                    .map(|&v| p.out.apply(saturating_rounding_doubling_high_mul(v, r))),
            );
        }
        Ok(out)
    }
}

/// Generates the softmax program for `config`.
pub fn generate(
    ops: &SoftmaxOperands,
    config: &MachineConfig,
) -> Result<KernelProgram, KernelError> {
    let p = Params::new(ops)?;
    let (rows, cols) = (ops.rows, ops.cols);
    let shape = StreamShape {
        rows,
        in_row_bytes: cols,
        out_row_bytes: cols,
        acc_per_row: cols + 3,
        const_bytes: 0,
    };
    let tile_rows = stream::tile_rows(config, &shape)?;
    let mut b = ProgramBuilder::default();
    let x_dram = b.alloc_data(i8_bytes(&ops.x))?;
    let out_dram = b.alloc(rows * cols)?;
    // Accumulator scratch: exponentials, then per-row max, sum, reciprocal.
    let (max, sum, recip) = {
        let base = (tile_rows * cols) as u64;
        (base, base + tile_rows as u64, base + 2 * tile_rows as u64)
    };
    let compute = |b: &mut ProgramBuilder, t: &Tile| {
        let r = t.rows.len();
        vector::strides(b, 1, cols, 1)?;
        vector::reduce(b, Reduce::Max, max, Operand::Act(t.input), (r, cols), 0)?;
        vector::strides(b, cols, cols, 1)?;
        vector::requant(b, &vector::int32_out(p.to_log2.0, p.to_log2.1))?;
        vector::prescale(b, Prescale::IDENTITY, Prescale::IDENTITY)?;
        let (e, x) = (Operand::Acc(0), Operand::Act(t.input));
        vector::binary(b, BinOp::Sub, e, x, Operand::Acc(max), r, cols, true)?;
        vector::special(b, Special::Exp2, (0, 0), (r, cols), p.frac, 0)?;
        vector::strides(b, 1, cols, 1)?;
        vector::reduce(b, Reduce::Sum, sum, e, (r, cols), 0)?;
        vector::special(b, Special::Recip, (recip, sum), (1, r), p.frac + 30, 0)?;
        vector::strides(b, cols, cols, 1)?;
        vector::requant(b, &p.out)?;
        let out = Operand::Act(t.output);
        vector::binary(b, BinOp::Mulq, out, e, Operand::Acc(recip), r, cols, true)
    };
    let kernel = StreamKernel {
        load_consts: &|_| Ok(()),
        load: &|b, t| stream::load_rows(b, x_dram, cols, &t.rows, t.input, cols),
        compute: &compute,
        store: &|b, t| stream::store_rows(b, out_dram, cols, t),
    };
    stream::emit(&mut b, &shape, tile_rows, &kernel)?;
    Ok(KernelProgram {
        program: b.finish()?,
        out_addr: out_dram,
        out_len: rows * cols,
        inputs: vec![x_dram],
        tile_rows,
    })
}
