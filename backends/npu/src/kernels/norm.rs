//! LayerNorm and RMSNorm over the rows of an int8 matrix on the vector unit:
//!
//! 1. LayerNorm: `vred sum`, then `d = x * 2^K - sum * 2^K / cols` (`vbin sub`
//!    with per-operand pre-scales); RMSNorm: `d = (x - zp) * 2^K` (`vbin cvt`).
//! 2. `V = round(sum(d^2) / 2^SH)` (`vred sumsq`), `r = floor(2^30 / sqrt(V + eps'))`
//!    (`vsfu rsqrt`), `q = d * r / 2^31` (`vbin mulq`): the normalised value in
//!    units of `c_q = 2 * sqrt(cols) * 2^(-SH/2)`.
//! 3. `u = q * gamma` (`vbin mul`), then `requant` adds beta (int32 at the
//!    scale of `u`) and rescales to the output.
//!
//! K = 21 keeps `d` below 2^29; SH = 28 + ceil(log2(cols)) keeps `V` below
//! 2^30. For rows whose standard deviation is at least one input step the
//! internal rounding stays below 0.1 output steps, so the dequantised output
//! is within 0.6 output steps of the real norm (with the dequantised gamma,
//! beta and eps), or of its clamp to the output range.

use super::data::{i32_bytes, i8_bytes, SplitMix64};
use super::stream::{self, StreamKernel, StreamShape, Tile};
use super::vector::{self, Operand, Reduce, Special};
use super::{align, ceil_log2, scale_of, KernelError, KernelProgram, ProgramBuilder, Quant};
use crate::config::MachineConfig;
use crate::fixed::{round_shift_saturate, rsqrt, Prescale};
use crate::isa::Instr;
use crate::quant::{saturating_rounding_doubling_high_mul, Requant};
use crate::sim::BinOp;

const K: i32 = 21;
const RSQRT_FRAC: u32 = 30;

/// Which normalisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    /// `(x - mean) / sqrt(var + eps) * gamma + beta`.
    LayerNorm,
    /// `x / sqrt(mean(x^2) + eps) * gamma`.
    RmsNorm,
}

/// Operands of one normalisation layer.
#[derive(Clone, Debug)]
pub struct NormOperands {
    /// LayerNorm or RMSNorm.
    pub kind: NormKind,
    /// Rows (independent normalisations).
    pub rows: usize,
    /// Elements per row.
    pub cols: usize,
    /// Input, rows x cols.
    pub x: Vec<i8>,
    /// Input quantisation.
    pub input: Quant,
    /// Per-column scale, symmetric int8 with `gamma_scale`.
    pub gamma: Vec<i8>,
    /// The real value of one gamma step.
    pub gamma_scale: f64,
    /// Per-column shift (LayerNorm only), symmetric int8 with `beta_scale`.
    pub beta: Vec<i8>,
    /// The real value of one beta step.
    pub beta_scale: f64,
    /// Added to the variance.
    pub eps: f64,
    /// Output quantisation.
    pub output: Quant,
}

/// Everything the generator and the reference share.
struct Params {
    center: Prescale,
    mean: Prescale,
    sumsq_shift: u32,
    eps: i64,
    beta: Vec<i32>,
    out: Requant,
}

impl NormOperands {
    /// Random operands from `seed`.
    pub fn random(kind: NormKind, rows: usize, cols: usize, seed: u64) -> NormOperands {
        let mut rng = SplitMix64::new(seed);
        let beta = if kind == NormKind::LayerNorm {
            rng.i8s(cols)
        } else {
            Vec::new()
        };
        NormOperands {
            kind,
            rows,
            cols,
            x: rng.i8s(rows * cols),
            input: Quant {
                scale: 0.05,
                zero_point: (rng.next_u64() % 21) as i32 - 10,
            },
            gamma: rng.i8s(cols),
            gamma_scale: 1.5 / 127.0,
            beta,
            beta_scale: 0.5 / 127.0,
            eps: 1e-5,
            output: Quant {
                scale: 6.0 / 255.0,
                zero_point: 0,
            },
        }
    }

    fn params(&self) -> Result<Params, KernelError> {
        let (rows, cols) = (self.rows, self.cols);
        self.input.check("input")?;
        self.output.check("output")?;
        let betas = if self.kind == NormKind::LayerNorm {
            cols
        } else {
            0
        };
        if rows == 0
            || cols == 0
            || self.x.len() != rows * cols
            || self.gamma.len() != cols
            || self.beta.len() != betas
        {
            return Err(KernelError::BadShape(format!(
                "{:?} {rows}x{cols} with {} inputs, {} gammas, {} betas",
                self.kind,
                self.x.len(),
                self.gamma.len(),
                self.beta.len()
            )));
        }
        if cols > 1 << 16 {
            return Err(KernelError::BadShape(format!(
                "{:?} rows of {cols} elements: at most 65536 (the sum of squares needs 28 + log2(cols) <= 44 bits of shift)",
                self.kind
            )));
        }
        let bad = |what: &str| KernelError::BadShape(format!("{what} must be positive and finite"));
        for (v, what) in [
            (self.gamma_scale, "gamma_scale"),
            (self.beta_scale, "beta_scale"),
        ] {
            if !(v > 0.0 && v.is_finite()) {
                return Err(bad(what));
            }
        }
        if !(self.eps >= 0.0 && self.eps.is_finite()) {
            return Err(bad("eps"));
        }
        let sh = 28 + ceil_log2(cols);
        let (center, mean) = match self.kind {
            NormKind::LayerNorm => {
                let (m, s) = scale_of(2f64.powi(K) / cols as f64, "mean")?;
                let center = Prescale {
                    offset: 0,
                    multiplier: 1 << 30,
                    shift: K + 1,
                };
                (
                    center,
                    Prescale {
                        offset: 0,
                        multiplier: m,
                        shift: s,
                    },
                )
            }
            NormKind::RmsNorm => (
                Prescale {
                    offset: -self.input.zero_point,
                    multiplier: 1 << 30,
                    shift: K + 1,
                },
                Prescale::IDENTITY,
            ),
        };
        // var (real) = s_x^2 * V * 2^sh / (cols * 2^2K): eps in units of V.
        let eps_v = self.eps / (self.input.scale * self.input.scale)
            * cols as f64
            * 2f64.powi(2 * K - sh as i32);
        let c_q = 2.0 * (cols as f64).sqrt() * 2f64.powf(-(sh as f64) / 2.0);
        let u_scale = c_q * self.gamma_scale;
        let beta = self
            .beta
            .iter()
            .map(|&b| (b as f64 * self.beta_scale / u_scale).round() as i64)
            .map(|b| b.clamp(i32::MIN as i64, i32::MAX as i64) as i32)
            .collect();
        let (multiplier, shift) = scale_of(u_scale / self.output.scale, "output")?;
        Ok(Params {
            center,
            mean,
            sumsq_shift: sh,
            eps: eps_v.round().min(i32::MAX as f64) as i64,
            beta,
            out: Requant {
                multiplier,
                shift,
                zero_point: self.output.zero_point,
                clamp_min: -128,
                clamp_max: 127,
            },
        })
    }

    /// The reference: the same integer arithmetic, row by row.
    pub fn reference(&self) -> Result<Vec<i8>, KernelError> {
        let p = self.params()?;
        let mut out = Vec::with_capacity(self.x.len());
        for row in self.x.chunks(self.cols) {
            let sum: i32 = row.iter().map(|&v| v as i32).sum();
            let d: Vec<i32> = row
                .iter()
                .map(|&v| match self.kind {
                    NormKind::LayerNorm => p.center.apply(v as i32).wrapping_sub(p.mean.apply(sum)),
                    NormKind::RmsNorm => p.center.apply(v as i32),
                })
                .collect();
            let sumsq: i128 = d.iter().map(|&v| v as i128 * v as i128).sum();
            let v = round_shift_saturate(sumsq, p.sumsq_shift);
            let r = rsqrt(v as i64 + p.eps, RSQRT_FRAC);
            for (c, &dv) in d.iter().enumerate() {
                let u =
                    saturating_rounding_doubling_high_mul(dv, r).wrapping_mul(self.gamma[c] as i32);
                out.push(
                    p.out
                        .apply(u.wrapping_add(p.beta.get(c).copied().unwrap_or(0))),
                );
            }
        }
        Ok(out)
    }
}

/// Generates the normalisation program for `config`.
pub fn generate(ops: &NormOperands, config: &MachineConfig) -> Result<KernelProgram, KernelError> {
    let p = ops.params()?;
    let (rows, cols) = (ops.rows, ops.cols);
    let beta_at = align(cols) as u64;
    let shape = StreamShape {
        rows,
        in_row_bytes: cols,
        out_row_bytes: cols,
        acc_per_row: cols + 2,
        const_bytes: beta_at as usize + 4 * p.beta.len(),
    };
    let tile_rows = stream::tile_rows(config, &shape)?;
    let mut b = ProgramBuilder::default();
    let gamma_dram = b.alloc_data(i8_bytes(&ops.gamma))?;
    let beta_dram = b.alloc_data(i32_bytes(&p.beta))?;
    let x_dram = b.alloc_data(i8_bytes(&ops.x))?;
    let out_dram = b.alloc(rows * cols)?;
    let (stat, recip) = ((tile_rows * cols) as u64, (tile_rows * (cols + 1)) as u64);
    let load_consts = |b: &mut ProgramBuilder| {
        stream::load_block(b, gamma_dram, cols, 0)?;
        if !p.beta.is_empty() {
            stream::load_block(b, beta_dram, 4 * cols, beta_at)?;
        }
        Ok(())
    };
    let compute = |b: &mut ProgramBuilder, t: &Tile| {
        let (r, x, d) = (t.rows.len(), Operand::Act(t.input), Operand::Acc(0));
        vector::requant(b, &vector::int32_out(0, 0))?;
        vector::prescale(b, p.center, p.mean)?;
        if ops.kind == NormKind::LayerNorm {
            vector::strides(b, 1, cols, 1)?;
            vector::reduce(b, Reduce::Sum, stat, x, (r, cols), 0)?;
            vector::strides(b, cols, cols, 1)?;
            vector::binary(b, BinOp::Sub, d, x, Operand::Acc(stat), r, cols, true)?;
        } else {
            vector::strides(b, cols, cols, 1)?;
            vector::binary(b, BinOp::Cvt, d, x, d, r, cols, false)?;
        }
        vector::strides(b, 1, cols, 1)?;
        vector::reduce(b, Reduce::SumSq, stat, d, (r, cols), p.sumsq_shift)?;
        vector::special(b, Special::Rsqrt, (recip, stat), (1, r), RSQRT_FRAC, p.eps)?;
        vector::prescale(b, Prescale::IDENTITY, Prescale::IDENTITY)?;
        vector::strides(b, cols, cols, 1)?;
        vector::binary(b, BinOp::Mulq, d, d, Operand::Acc(recip), r, cols, true)?;
        vector::strides(b, cols, cols, 0)?;
        vector::binary(b, BinOp::Mul, d, d, Operand::Act(0), r, cols, false)?;
        vector::strides(b, cols, cols, 0)?;
        vector::requant(b, &p.out)?;
        b.emit(Instr::Requant {
            dst: t.output as i64,
            acc: 0,
            bias: beta_at as i64,
            rows: r as i64,
            cols: cols as i64,
            mode: i64::from(!p.beta.is_empty()),
        })
    };
    let kernel = StreamKernel {
        load_consts: &load_consts,
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
