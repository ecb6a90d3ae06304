//! The vector unit: requantisation, copies, table lookups, elementwise
//! binary operations, row reductions and the special-function unit.
//!
//! Vector operands live in the activation SRAM (int8, one byte per element)
//! or in the accumulator (int32, one entry per element); `vec.cfg` holds the
//! row strides in the operand memory's units.

use super::{space_mem, Effect, MachineState};
use crate::fixed::{exp2, reciprocal, round_shift_saturate, rsqrt, Prescale};
use crate::isa::Instr;
use crate::quant::{Requant, SHIFT_RANGE};
use crate::sim::memory::{Mem, Region};

/// An elementwise binary operation (`vbin`'s `op` field, in encoding order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    /// Wrapping add.
    Add,
    /// Wrapping subtract.
    Sub,
    /// Wrapping multiply (low 32 bits).
    Mul,
    /// Q31 fixed-point multiply: TFLite's `SaturatingRoundingDoublingHighMul`.
    Mulq,
    /// Maximum.
    Max,
    /// Minimum.
    Min,
    /// `a` alone (conversion / rescale); `b` is not read.
    Cvt,
    /// Multiply-accumulate into the destination: `dst + a * b` (wrapping).
    Mac,
}

impl BinOp {
    /// All operations in encoding order.
    pub const ALL: [BinOp; 8] = [
        BinOp::Add,
        BinOp::Sub,
        BinOp::Mul,
        BinOp::Mulq,
        BinOp::Max,
        BinOp::Min,
        BinOp::Cvt,
        BinOp::Mac,
    ];

    /// The encoding of this operation.
    pub fn code(self) -> i64 {
        self as i64
    }

    /// `op(a, b)` on pre-scaled operands; `d` is the destination's old value.
    pub fn apply(self, a: i32, b: i32, d: i32) -> i32 {
        match self {
            BinOp::Add => a.wrapping_add(b),
            BinOp::Sub => a.wrapping_sub(b),
            BinOp::Mul => a.wrapping_mul(b),
            BinOp::Mulq => crate::quant::saturating_rounding_doubling_high_mul(a, b),
            BinOp::Max => a.max(b),
            BinOp::Min => a.min(b),
            BinOp::Cvt => a,
            BinOp::Mac => d.wrapping_add(a.wrapping_mul(b)),
        }
    }
}

/// The output stage shared by `vbin`: rescale by `rq.cfg` (multiplier 0 =
/// bypass), add the zero point, clamp for int8 destinations.
fn output_stage(rq: &Requant, t: i32, int8: bool) -> i32 {
    if int8 {
        rq.apply(t) as i32
    } else {
        rq.rescale(t).wrapping_add(rq.zero_point)
    }
}

fn vmem(code: i64) -> Mem {
    if code == 0 {
        Mem::Act
    } else {
        Mem::Acc
    }
}

impl MachineState {
    fn get(&self, mem: Mem, i: usize) -> i32 {
        match mem {
            Mem::Acc => self.acc[i],
            _ => self.act[i] as i8 as i32,
        }
    }

    fn put(&mut self, mem: Mem, i: usize, v: i32) {
        match mem {
            Mem::Acc => self.acc[i] = v,
            _ => self.act[i] = v as u8,
        }
    }

    fn region(
        &self,
        mem: Mem,
        base: i64,
        rows: i64,
        len: u64,
        stride: u64,
    ) -> Result<Region, String> {
        let r = Region {
            mem,
            base: base as u64,
            rows: rows as u64,
            row_len: len,
            stride,
        };
        r.check(self.len(mem)).map(|_| r)
    }

    /// Executes a vector-unit instruction; `None` if `instr` is not one.
    pub(super) fn execute_vector(&mut self, instr: &Instr) -> Option<Result<Effect, String>> {
        let [dst_stride, src_stride, src2_stride] = self.vec;
        let mut fx = Effect::default();
        let result = match *instr {
            Instr::VbinCfg {
                a_offset,
                a_multiplier,
                a_shift,
                b_offset,
                b_multiplier,
                b_shift,
            } => self.vbin_cfg([
                (a_offset, a_multiplier, a_shift),
                (b_offset, b_multiplier, b_shift),
            ]),
            Instr::Requant {
                dst,
                acc,
                bias,
                rows,
                cols,
                mode,
            } => self.requant([dst, acc, bias], rows, cols, mode, &mut fx),
            Instr::Vcopy {
                dst_space,
                dst,
                src_space,
                src,
                rows,
                cols,
            } => (|| {
                let from = self.region(space_mem(src_space), src, rows, cols as u64, src_stride)?;
                let to = self.region(space_mem(dst_space), dst, rows, cols as u64, dst_stride)?;
                let n = cols as usize;
                for (s, d) in from.row_starts().zip(to.row_starts()) {
                    let row: Vec<u8> = self.sram(from.mem)[s..s + n].to_vec();
                    self.sram_mut(to.mem)[d..d + n].copy_from_slice(&row);
                }
                fx.vector_ops = from.units();
                fx.reads.push(from);
                fx.writes.push(to);
                Ok(())
            })(),
            Instr::Vlut {
                dst,
                src,
                table,
                rows,
                cols,
            } => (|| {
                let from = self.region(Mem::Act, src, rows, cols as u64, src_stride)?;
                let to = self.region(Mem::Act, dst, rows, cols as u64, dst_stride)?;
                let lut = self.region(Mem::Act, table, 1, 256, 0)?;
                let t: Vec<u8> = self.act[lut.base as usize..lut.base as usize + 256].to_vec();
                let n = cols as usize;
                for (s, d) in from.row_starts().zip(to.row_starts()) {
                    for c in 0..n {
                        self.act[d + c] = t[(self.act[s + c] as i8 as i32 + 128) as usize];
                    }
                }
                fx.vector_ops = from.units();
                fx.reads.extend([from, lut]);
                fx.writes.push(to);
                Ok(())
            })(),
            Instr::Vbin {
                op,
                dst_mem,
                dst,
                a_mem,
                a,
                b_mem,
                b,
                rows,
                cols,
                bcast,
            } => (|| {
                let op = BinOp::ALL[op as usize];
                if op == BinOp::Mac && dst_mem == 0 {
                    return Err("`mac` accumulates into the accumulator (dst_mem=acc)".into());
                }
                let n = cols as u64;
                let ra = self.region(vmem(a_mem), a, rows, n, src_stride)?;
                let b_len = if bcast != 0 { 1 } else { n };
                let b_rows = if op == BinOp::Cvt { 0 } else { rows };
                let rb = self.region(vmem(b_mem), b, b_rows, b_len, src2_stride)?;
                let rd = self.region(vmem(dst_mem), dst, rows, n, dst_stride)?;
                let [pa, pb] = self.prescale;
                let rq = self.rq;
                let b_starts: Vec<usize> = (0..rows as u64)
                    .map(|r| (rb.base + r * rb.stride) as usize)
                    .collect();
                for ((sa, sd), sb) in ra.row_starts().zip(rd.row_starts()).zip(b_starts) {
                    for c in 0..n as usize {
                        let x = pa.apply(self.get(ra.mem, sa + c));
                        let y = if op == BinOp::Cvt {
                            0
                        } else {
                            pb.apply(self.get(rb.mem, sb + c * (bcast == 0) as usize))
                        };
                        let old = if op == BinOp::Mac {
                            self.acc[sd + c]
                        } else {
                            0
                        };
                        let t = op.apply(x, y, old);
                        self.put(rd.mem, sd + c, output_stage(&rq, t, rd.mem == Mem::Act));
                    }
                }
                fx.vector_ops = ra.units();
                if matches!(op, BinOp::Mul | BinOp::Mulq | BinOp::Mac) {
                    fx.vector_macs = ra.units();
                }
                fx.reads.extend([ra, rb]);
                if op == BinOp::Mac {
                    fx.reads.push(rd);
                }
                fx.writes.push(rd);
                Ok(())
            })(),
            Instr::Vred {
                op,
                dst,
                src_mem,
                src,
                rows,
                cols,
                shift,
            } => (|| {
                let from = self.region(vmem(src_mem), src, rows, cols as u64, src_stride)?;
                let to = self.region(Mem::Acc, dst, rows, 1, dst_stride)?;
                for (s, d) in from.row_starts().zip(to.row_starts()) {
                    let values = (s..s + cols as usize).map(|i| self.get(from.mem, i) as i128);
                    let total = match op {
                        0 => values.sum(),
                        1 => values.max().unwrap_or(i32::MIN as i128),
                        _ => values.map(|v| v * v).sum(),
                    };
                    self.acc[d] = round_shift_saturate(total, shift as u32);
                }
                fx.vector_ops = from.units();
                fx.reads.push(from);
                fx.writes.push(to);
                Ok(())
            })(),
            Instr::Vsfu {
                op,
                dst,
                src,
                rows,
                cols,
                frac,
                bias,
            } => (|| {
                let from = self.region(Mem::Acc, src, rows, cols as u64, src_stride)?;
                let to = self.region(Mem::Acc, dst, rows, cols as u64, dst_stride)?;
                let f = [reciprocal, rsqrt, exp2][op as usize];
                for (s, d) in from.row_starts().zip(to.row_starts()) {
                    for c in 0..cols as usize {
                        self.acc[d + c] = f(self.acc[s + c] as i64 + bias, frac as u32);
                    }
                }
                fx.sfu_ops = from.units();
                fx.reads.push(from);
                fx.writes.push(to);
                Ok(())
            })(),
            _ => return None,
        };
        Some(result.map(|()| fx))
    }

    fn vbin_cfg(&mut self, params: [(i64, i64, i64); 2]) -> Result<(), String> {
        for (i, (offset, multiplier, shift)) in params.into_iter().enumerate() {
            if !SHIFT_RANGE.contains(&(shift as i32)) {
                return Err(format!(
                    "{}_shift={shift} outside {SHIFT_RANGE:?}",
                    ["a", "b"][i]
                ));
            }
            self.prescale[i] = Prescale {
                offset: offset as i32,
                multiplier: multiplier as i32,
                shift: shift as i32,
            };
        }
        Ok(())
    }

    fn requant(
        &mut self,
        [dst, acc, bias]: [i64; 3],
        rows: i64,
        cols: i64,
        mode: i64,
        fx: &mut Effect,
    ) -> Result<(), String> {
        let [dst_stride, src_stride, _] = self.vec;
        let n = cols as usize;
        let src = self.region(Mem::Acc, acc, rows, n as u64, src_stride)?;
        let out = self.region(Mem::Act, dst, rows, n as u64, dst_stride)?;
        // Per-column parameter record: bias (mode 1), or bias, multiplier, shift (mode 2).
        let words = [0, 1, 3][mode as usize];
        let params = self.region(
            Mem::Act,
            bias,
            i64::from(words > 0),
            4 * words * n as u64,
            0,
        )?;
        let word = |c: usize, w: usize| {
            let at = params.base as usize + 4 * (words as usize * c + w);
            let b = &self.act[at..at + 4]; // inside the range checked above
            i32::from_le_bytes([b[0], b[1], b[2], b[3]])
        };
        let mut per_col = Vec::with_capacity(n);
        for c in 0..n {
            let mut rq = self.rq;
            if mode == 2 {
                rq.multiplier = word(c, 1);
                rq.shift = word(c, 2);
                if !SHIFT_RANGE.contains(&rq.shift) {
                    return Err(format!(
                        "channel {c} shift={} outside {SHIFT_RANGE:?}",
                        rq.shift
                    ));
                }
            }
            per_col.push((if words > 0 { word(c, 0) } else { 0 }, rq));
        }
        for (s, d) in src.row_starts().zip(out.row_starts()) {
            for (c, (b, rq)) in per_col.iter().enumerate() {
                self.act[d + c] = rq.apply(self.acc[s + c].wrapping_add(*b)) as u8;
            }
        }
        fx.vector_ops = src.units();
        fx.reads.extend([src, params]);
        fx.writes.push(out);
        Ok(())
    }
}
