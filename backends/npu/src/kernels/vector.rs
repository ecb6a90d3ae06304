//! Emitting vector-unit instructions with named operands.

use super::{KernelError, ProgramBuilder};
use crate::fixed::Prescale;
use crate::isa::Instr;
use crate::quant::Requant;
use crate::sim::BinOp;

/// A vector operand: an address in the activation SRAM (int8) or in the
/// accumulator (int32).
#[derive(Clone, Copy, Debug)]
pub enum Operand {
    /// int8 bytes in activation SRAM.
    Act(u64),
    /// int32 entries in the accumulator.
    Acc(u64),
}

impl Operand {
    fn parts(self) -> (i64, i64) {
        match self {
            Operand::Act(a) => (0, a as i64),
            Operand::Acc(a) => (1, a as i64),
        }
    }
}

/// Sets the row strides of the destination and the two sources.
pub fn strides(b: &mut ProgramBuilder, dst: usize, a: usize, b2: usize) -> Result<(), KernelError> {
    b.emit(Instr::VecCfg {
        dst_stride: dst as i64,
        src_stride: a as i64,
        src2_stride: b2 as i64,
    })
}

/// Sets the output stage.
pub fn requant(b: &mut ProgramBuilder, q: &Requant) -> Result<(), KernelError> {
    b.emit(Instr::RqCfg {
        multiplier: q.multiplier as i64,
        shift: q.shift as i64,
        zero_point: q.zero_point as i64,
        clamp_min: q.clamp_min as i64,
        clamp_max: q.clamp_max as i64,
    })
}

/// An int32 output stage: `MBQM(t, multiplier, shift)` (0 = bypass), no offset.
pub fn int32_out(multiplier: i32, shift: i32) -> Requant {
    Requant {
        multiplier,
        shift,
        zero_point: 0,
        clamp_min: -128,
        clamp_max: 127,
    }
}

/// Sets the operand pre-scaling.
pub fn prescale(b: &mut ProgramBuilder, pa: Prescale, pb: Prescale) -> Result<(), KernelError> {
    b.emit(Instr::VbinCfg {
        a_offset: pa.offset as i64,
        a_multiplier: pa.multiplier as i64,
        a_shift: pa.shift as i64,
        b_offset: pb.offset as i64,
        b_multiplier: pb.multiplier as i64,
        b_shift: pb.shift as i64,
    })
}

/// `dst = out(op(pre_a(a), pre_b(b)))` over `rows` x `cols`; `bcast`: one
/// `b` per row.
#[allow(clippy::too_many_arguments)]
pub fn binary(
    b: &mut ProgramBuilder,
    op: BinOp,
    dst: Operand,
    a: Operand,
    b2: Operand,
    rows: usize,
    cols: usize,
    bcast: bool,
) -> Result<(), KernelError> {
    let ((dst_mem, dst), (a_mem, a), (b_mem, b2)) = (dst.parts(), a.parts(), b2.parts());
    b.emit(Instr::Vbin {
        op: op.code(),
        dst_mem,
        dst,
        a_mem,
        a,
        b_mem,
        b: b2,
        rows: rows as i64,
        cols: cols as i64,
        bcast: i64::from(bcast),
    })
}

/// A row reduction (`vred`'s `op` field).
#[derive(Clone, Copy, Debug)]
pub enum Reduce {
    /// Sum.
    Sum,
    /// Maximum.
    Max,
    /// Sum of squares.
    SumSq,
}

/// A special function (`vsfu`'s `op` field).
#[derive(Clone, Copy, Debug)]
pub enum Special {
    /// Reciprocal.
    Recip,
    /// Reciprocal square root.
    Rsqrt,
    /// Power of two.
    Exp2,
}

/// Row reduction `op` into one accumulator entry per row.
pub fn reduce(
    b: &mut ProgramBuilder,
    op: Reduce,
    dst: u64,
    src: Operand,
    (rows, cols): (usize, usize),
    shift: u32,
) -> Result<(), KernelError> {
    let (src_mem, src) = src.parts();
    b.emit(Instr::Vred {
        op: op as i64,
        dst: dst as i64,
        src_mem,
        src,
        rows: rows as i64,
        cols: cols as i64,
        shift: shift as i64,
    })
}

/// Special function `op` on accumulator entries.
pub fn special(
    b: &mut ProgramBuilder,
    op: Special,
    (dst, src): (u64, u64),
    (rows, cols): (usize, usize),
    frac: u32,
    bias: i64,
) -> Result<(), KernelError> {
    b.emit(Instr::Vsfu {
        op: op as i64,
        dst: dst as i64,
        src: src as i64,
        rows: rows as i64,
        cols: cols as i64,
        frac: frac as i64,
        bias,
    })
}
