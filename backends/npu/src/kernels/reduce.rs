//! Row reductions on the vector unit: each row of an int8 `rows x cols`
//! matrix to one int8, the sum or the maximum requantised. Pooling is
//! this after a DMA window pattern (one row per output pixel, one column
//! per window tap: max pooling, average pooling with the `1/taps` scale in
//! the requantisation); a ReduceSum over trailing axes (global average
//! pooling) is this on the tensor itself. Per row tile: `vred` into the
//! accumulator (exact), then `requant` to int8 — the result is exact up
//! to the one requantisation rounding.
//!
//! With `channels > 1` a row holds `taps x channels` bytes (an NHWC window:
//! one block of channels per tap) and reduces to `channels` outputs, the
//! sum or maximum over the taps of each channel: a `vbin cvt` of the first
//! block into the accumulator, then one `vbin add`/`max` per further tap.

use super::data::{i8_bytes, SplitMix64};
use super::stream::{self, StreamKernel, StreamShape, Tile};
use super::vector::{self, Operand, Reduce};
use super::{KernelError, KernelProgram, ProgramBuilder};
use crate::config::MachineConfig;
use crate::fixed::Prescale;
use crate::isa::Instr;
use crate::quant::{Requant, SHIFT_RANGE};
use crate::sim::BinOp;

/// Which statistic a row reduces to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowReduce {
    /// The sum of the row.
    Sum,
    /// The largest element of the row.
    Max,
}

/// Operands of one row reduction.
#[derive(Clone, Debug)]
pub struct ReduceOperands {
    /// Sum or maximum.
    pub op: RowReduce,
    /// Rows.
    pub rows: usize,
    /// Elements per row (`taps x channels`).
    pub cols: usize,
    /// Outputs per row: each the reduction of every `channels`-th element
    /// of the row from its own offset (1: the whole row).
    pub channels: usize,
    /// The input, `rows x cols` row-major.
    pub x: Vec<i8>,
    /// Requantisation of the int32 sum or maximum to the int8 output.
    pub quant: Requant,
}

impl ReduceOperands {
    /// Random operands from `seed`, the requantisation scaled so sums of
    /// `cols` values spread over the int8 range.
    pub fn random(op: RowReduce, rows: usize, cols: usize, seed: u64) -> ReduceOperands {
        let mut rng = SplitMix64::new(seed);
        let scale = match op {
            RowReduce::Sum => 1.0 / (cols.max(1) as f64).sqrt(),
            RowReduce::Max => 0.9,
        };
        let (multiplier, shift) = Requant::quantize_scale(scale).unwrap_or((1 << 30, 0));
        ReduceOperands {
            op,
            rows,
            cols,
            channels: 1,
            x: rng.i8s(rows * cols),
            quant: Requant {
                multiplier,
                shift,
                zero_point: (rng.next_u64() % 5) as i32 - 2,
                clamp_min: -128,
                clamp_max: 127,
            },
        }
    }

    /// The reference result.
    pub fn reference(&self) -> Vec<i8> {
        let ch = self.channels.max(1);
        self.x
            .chunks(self.cols.max(1))
            .flat_map(|row| {
                (0..ch).map(move |c| {
                    let taps = row.iter().skip(c).step_by(ch).map(|&v| v as i32);
                    let acc = match self.op {
                        RowReduce::Sum => taps.sum(),
                        RowReduce::Max => taps.max().unwrap_or(0),
                    };
                    self.quant.apply(acc)
                })
            })
            .collect()
    }

    fn check(&self) -> Result<(), KernelError> {
        let bad = |m: String| Err(KernelError::BadShape(m));
        let blocks = self.channels > 0 && self.cols.is_multiple_of(self.channels);
        if self.rows == 0 || !blocks || self.cols == 0 || self.x.len() != self.rows * self.cols {
            return bad(format!(
                "reduction of {} x {} ({} channels) over {} elements",
                self.rows,
                self.cols,
                self.channels,
                self.x.len()
            ));
        }
        if self.cols > (1 << 23) {
            return bad(format!(
                "{} elements per row (the sum must fit int32)",
                self.cols
            ));
        }
        if !SHIFT_RANGE.contains(&self.quant.shift) {
            return bad(format!(
                "shift {} outside {SHIFT_RANGE:?}",
                self.quant.shift
            ));
        }
        Ok(())
    }
}

/// Generates the reduction program for `config`.
pub fn generate(
    ops: &ReduceOperands,
    config: &MachineConfig,
) -> Result<KernelProgram, KernelError> {
    ops.check()?;
    let (rows, cols, ch) = (ops.rows, ops.cols, ops.channels);
    let shape = StreamShape {
        rows,
        in_row_bytes: cols,
        out_row_bytes: ch,
        acc_per_row: ch,
        const_bytes: 0,
    };
    let tile_rows = stream::tile_rows(config, &shape)?;
    let mut b = ProgramBuilder::default();
    let in_dram = b.alloc_data(i8_bytes(&ops.x))?;
    let out_dram = b.alloc(rows * ch)?;
    let op = match ops.op {
        RowReduce::Sum => Reduce::Sum,
        RowReduce::Max => Reduce::Max,
    };
    let load = |b: &mut ProgramBuilder, t: &Tile| {
        stream::load_rows(b, in_dram, cols, &t.rows, t.input, cols)
    };
    let compute = |b: &mut ProgramBuilder, t: &Tile| {
        let r = t.rows.len();
        if ch > 1 {
            return per_tap(b, ops, t);
        }
        vector::strides(b, 1, cols, 0)?;
        vector::reduce(b, op, 0, Operand::Act(t.input), (r, cols), 0)?;
        vector::strides(b, r, r, 0)?;
        vector::requant(b, &ops.quant)?;
        b.emit(Instr::Requant {
            dst: t.output as i64,
            acc: 0,
            bias: 0,
            rows: 1,
            cols: r as i64,
            mode: 0,
        })
    };
    let kernel = StreamKernel {
        load_consts: &|_| Ok(()),
        load: &load,
        compute: &compute,
        store: &|b, t| stream::store_rows(b, out_dram, ch, t),
    };
    stream::emit(&mut b, &shape, tile_rows, &kernel)?;
    Ok(KernelProgram {
        program: b.finish()?,
        out_addr: out_dram,
        out_len: rows * ch,
        inputs: vec![in_dram],
        tile_rows,
    })
}

/// A tile of the per-tap reduction: the first tap's block converted into
/// the accumulator, each further block added or maxed in, requantised.
fn per_tap(b: &mut ProgramBuilder, ops: &ReduceOperands, t: &Tile) -> Result<(), KernelError> {
    let (r, cols, ch) = (t.rows.len(), ops.cols, ops.channels);
    vector::strides(b, ch, cols, ch)?;
    vector::prescale(b, Prescale::IDENTITY, Prescale::IDENTITY)?;
    vector::requant(b, &vector::int32_out(0, 0))?;
    for tap in 0..cols / ch {
        let op = match (tap, ops.op) {
            (0, _) => BinOp::Cvt,
            (_, RowReduce::Sum) => BinOp::Add,
            (_, RowReduce::Max) => BinOp::Max,
        };
        let x = Operand::Act(t.input + (tap * ch) as u64);
        vector::binary(b, op, Operand::Acc(0), x, Operand::Acc(0), r, ch, false)?;
    }
    vector::strides(b, ch, ch, 0)?;
    vector::requant(b, &ops.quant)?;
    b.emit(Instr::Requant {
        dst: t.output as i64,
        acc: 0,
        bias: 0,
        rows: r as i64,
        cols: ch as i64,
        mode: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{simulate, SimOptions};

    /// Sums and maxima of random rows, several tiles, match the reference
    /// bit for bit; a bad shape is an error.
    #[test]
    fn row_reductions_match_the_reference() {
        let config = MachineConfig::edge_small();
        for (op, rows, cols, seed) in [
            (RowReduce::Sum, 37, 9, 1),
            (RowReduce::Max, 37, 9, 2),
            (RowReduce::Sum, 5, 1024, 3),
            (RowReduce::Max, 300, 1, 4),
        ] {
            let ops = ReduceOperands::random(op, rows, cols, seed);
            let k = generate(&ops, &config).unwrap();
            let r = simulate(&k.program, &config, SimOptions::default()).unwrap();
            assert_eq!(k.output(&r.dram), ops.reference(), "{op:?} {rows}x{cols}");
        }
        for (op, rows, taps, ch) in [(RowReduce::Max, 50, 9, 16), (RowReduce::Sum, 9, 4, 3)] {
            let ops = ReduceOperands {
                channels: ch,
                ..ReduceOperands::random(op, rows, taps * ch, 5)
            };
            let k = generate(&ops, &config).unwrap();
            let r = simulate(&k.program, &config, SimOptions::default()).unwrap();
            assert_eq!(k.output(&r.dram), ops.reference(), "{op:?} per tap");
        }
        let mut bad = ReduceOperands::random(RowReduce::Sum, 2, 3, 1);
        bad.x.pop();
        assert!(generate(&bad, &config).is_err());
    }
}
