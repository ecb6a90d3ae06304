//! Linear interpolation of two int8 tensors with constant weights:
//! `out = requant(a * w0 + b * w1)` with `w0 + w1 = 127` (Q7 weights of
//! `a` and `b`), the weights one per column (a row vector repeated over
//! the rows) or one per row (`vbin`'s row broadcast). One axis of a
//! linear Resize: `a` and `b` are the lower and upper neighbours of each
//! output position (gathered by DMA), `w1/127` its fractional coordinate.
//! Per tile: `vbin mul` into the accumulator, `vbin mac`, `requant`; the
//! integer result is exact, so the output is within half an output step
//! of `(a*w0 + b*w1) / 127` in real units (the weights' own rounding,
//! at most 1/254 of `|b - a|`, comes on top).

use super::data::{i8_bytes, SplitMix64};
use super::stream::{self, StreamKernel, StreamShape, Tile};
use super::vector::{self, Operand};
use super::{align, KernelError, KernelProgram, ProgramBuilder};
use crate::config::MachineConfig;
use crate::fixed::Prescale;
use crate::isa::Instr;
use crate::quant::{Requant, SHIFT_RANGE};
use crate::sim::BinOp;

/// The sum of the two weights of every position (Q7).
pub const WEIGHT_ONE: i32 = 127;

/// Operands of one interpolation layer.
#[derive(Clone, Debug)]
pub struct LerpOperands {
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Lower neighbours, `rows x cols`.
    pub a: Vec<i8>,
    /// Upper neighbours, `rows x cols`.
    pub b: Vec<i8>,
    /// Weights of `b` (Q7, `0..=127`; `a`'s is `127 - w`): `cols` values
    /// (one per column) or `rows` values (one per row) with `per_row`.
    pub w: Vec<i8>,
    /// Whether `w` holds one weight per row.
    pub per_row: bool,
    /// Requantisation of the Q7 sum to the output.
    pub quant: Requant,
}

impl LerpOperands {
    /// Random operands from `seed`.
    pub fn random(rows: usize, cols: usize, per_row: bool, seed: u64) -> LerpOperands {
        let mut rng = SplitMix64::new(seed);
        let n = if per_row { rows } else { cols };
        let (multiplier, shift) = Requant::quantize_scale(1.0 / 127.0).unwrap_or((1 << 30, -6));
        LerpOperands {
            rows,
            cols,
            a: rng.i8s(rows * cols),
            b: rng.i8s(rows * cols),
            w: (0..n).map(|_| (rng.next_u64() % 128) as i8).collect(),
            per_row,
            quant: Requant {
                multiplier,
                shift,
                zero_point: 0,
                clamp_min: -128,
                clamp_max: 127,
            },
        }
    }

    /// The reference result.
    pub fn reference(&self) -> Vec<i8> {
        (0..self.rows * self.cols)
            .map(|i| {
                let w = i32::from(
                    self.w[if self.per_row {
                        i / self.cols
                    } else {
                        i % self.cols
                    }],
                );
                let acc = i32::from(self.a[i]) * (WEIGHT_ONE - w) + i32::from(self.b[i]) * w;
                self.quant.apply(acc)
            })
            .collect()
    }

    fn check(&self) -> Result<(), KernelError> {
        let n = self.rows * self.cols;
        let weights = if self.per_row { self.rows } else { self.cols };
        if n == 0 || self.a.len() != n || self.b.len() != n || self.w.len() != weights {
            return Err(KernelError::BadShape(format!(
                "interpolation of {} x {} with {}, {} and {} weights",
                self.rows,
                self.cols,
                self.a.len(),
                self.b.len(),
                self.w.len()
            )));
        }
        if self.w.iter().any(|&w| w < 0) || !SHIFT_RANGE.contains(&self.quant.shift) {
            return Err(KernelError::BadShape(
                "weights must be in 0..=127 and the shift in range".into(),
            ));
        }
        Ok(())
    }
}

/// Generates the interpolation program for `config`; its
/// [`KernelProgram::inputs`] are `a` and `b`.
pub fn generate(ops: &LerpOperands, config: &MachineConfig) -> Result<KernelProgram, KernelError> {
    ops.check()?;
    let (rows, cols, per_row) = (ops.rows, ops.cols, ops.per_row);
    let w0: Vec<i8> = ops.w.iter().map(|&w| (WEIGHT_ONE as i8) - w).collect();
    // Per-column weights are constants at SRAM 0 (w0, then w1); per-row
    // weights come with each tile, after its a and b panels.
    let const_bytes = if per_row { 0 } else { align(cols) + cols };
    let shape = StreamShape {
        rows,
        in_row_bytes: 2 * cols + if per_row { 2 } else { 0 },
        out_row_bytes: cols,
        acc_per_row: cols,
        const_bytes,
    };
    let tile_rows = stream::tile_rows(config, &shape)?;
    let mut b = ProgramBuilder::default();
    let a_dram = b.alloc_data(i8_bytes(&ops.a))?;
    let b_dram = b.alloc_data(i8_bytes(&ops.b))?;
    let w0_dram = b.alloc_data(i8_bytes(&w0))?;
    let w1_dram = b.alloc_data(i8_bytes(&ops.w))?;
    let out_dram = b.alloc(rows * cols)?;
    let panel = (tile_rows * cols) as u64;
    let w1_const = align(cols) as u64;
    let load_consts = |b: &mut ProgramBuilder| {
        stream::load_block(b, w0_dram, cols, 0)?;
        stream::load_block(b, w1_dram, cols, w1_const)
    };
    let load = |b: &mut ProgramBuilder, t: &Tile| {
        stream::load_rows(b, a_dram, cols, &t.rows, t.input, cols)?;
        stream::load_rows(b, b_dram, cols, &t.rows, t.input + panel, cols)?;
        if per_row {
            let at = t.input + 2 * panel;
            stream::load_rows(b, w0_dram, 1, &t.rows, at, 1)?;
            stream::load_rows(b, w1_dram, 1, &t.rows, at + tile_rows as u64, 1)?;
        }
        Ok(())
    };
    let compute = |b: &mut ProgramBuilder, t: &Tile| {
        let r = t.rows.len();
        let (w0_at, w1_at, w_stride) = if per_row {
            let at = t.input + 2 * panel;
            (at, at + tile_rows as u64, 1)
        } else {
            (0, w1_const, 0)
        };
        vector::strides(b, cols, cols, w_stride)?;
        vector::prescale(b, Prescale::IDENTITY, Prescale::IDENTITY)?;
        vector::requant(b, &vector::int32_out(0, 0))?;
        let (x, y) = (Operand::Act(t.input), Operand::Act(t.input + panel));
        let acc = Operand::Acc(0);
        vector::binary(b, BinOp::Mul, acc, x, Operand::Act(w0_at), r, cols, per_row)?;
        vector::binary(b, BinOp::Mac, acc, y, Operand::Act(w1_at), r, cols, per_row)?;
        vector::strides(b, cols, cols, 0)?;
        vector::requant(b, &ops.quant)?;
        b.emit(Instr::Requant {
            dst: t.output as i64,
            acc: 0,
            bias: 0,
            rows: r as i64,
            cols: cols as i64,
            mode: 0,
        })
    };
    let kernel = StreamKernel {
        load_consts: &load_consts,
        load: &load,
        compute: &compute,
        store: &|b, t| stream::store_rows(b, out_dram, cols, t),
    };
    stream::emit(&mut b, &shape, tile_rows, &kernel)?;
    Ok(KernelProgram {
        program: b.finish()?,
        out_addr: out_dram,
        out_len: rows * cols,
        inputs: vec![a_dram, b_dram],
        tile_rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{simulate, SimOptions};

    /// Per-column and per-row weights, several tiles: the simulator gives
    /// the reference bytes; a negative weight is an error.
    #[test]
    fn interpolation_matches_the_reference() {
        let config = MachineConfig::edge_small();
        for (rows, cols, per_row) in [(40, 33, false), (300, 7, true), (3, 1000, false)] {
            let ops = LerpOperands::random(rows, cols, per_row, 3);
            let k = generate(&ops, &config).unwrap();
            let r = simulate(&k.program, &config, SimOptions::default()).unwrap();
            assert_eq!(
                k.output(&r.dram),
                ops.reference(),
                "{rows}x{cols} {per_row}"
            );
        }
        let mut bad = LerpOperands::random(2, 3, false, 1);
        bad.w[0] = -1;
        assert!(generate(&bad, &config).is_err());
    }
}
