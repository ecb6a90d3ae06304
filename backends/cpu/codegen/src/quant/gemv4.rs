//! Weight-only int4 GEMV/GEMM for decode: `y[m×n] = x[m×k] · Wᵀ` with f32
//! activations and W `[n, k]` stored as 4-bit integers, two per byte (low
//! nibble first, as ONNX and `com.microsoft.MatMulNBits` store them), in
//! blocks of `block` consecutive k with one f32 scale and zero point each.
//!
//! Decode reads every weight once per token, so the kernel is built
//! around the weight stream: W keeps its compact layout (each output
//! column's K nibbles contiguous, columns one after another), four
//! columns are computed together so the stream stays sequential and
//! eight independent FMA chains hide the latency, every row of x is
//! computed while the four columns' weights are in L1, and the weights
//! two groups of columns ahead are prefetched while these are read. Nibbles are unpacked in registers:
//! one byte vector gives the even k (low nibbles) and the odd k (high
//! nibbles), multiplied into x's even and odd elements, which the kernel
//! de-interleaves once per call into its scratch. Accumulation is f32.
//! The kernel's iterations are output columns.
//!
//! The unpacking is the kernel's cost (decode is otherwise bound by the
//! weight stream), so each weight takes four vector operations: widen the
//! byte to an i32 lane, mask (or shift) the nibble out and OR it into the
//! mantissa of 2²³ — the float `2²³ + q`, exact — and subtract `2²³ + zp`
//! (one table entry per block), which leaves `q − zp` exactly as the
//! interpreter computes it; the block's sum `Σ x·(q − zp)` is multiplied
//! by its scale once, not per weight. Signed weights are stored with their
//! sign bits flipped (`q + 8`, or `q + 128` for 8-bit ones) and the zero
//! point moved by as much, so the same unsigned unpacking serves both.

use inkwell::types::VectorType;
use inkwell::values::{FloatValue, IntValue, PointerValue, VectorValue};

use super::gemm8::{byte_offset, load_unaligned};
use crate::kernels::{Cx, Kernel};
use crate::CodegenError;

/// What one int4 weight-only GEMM computes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Int4GemmSpec {
    /// The exported kernel symbol.
    pub symbol: String,
    /// Rows of x and y (1 for decode).
    pub m: usize,
    /// The reduction length.
    pub k: usize,
    /// Output columns (rows of W).
    pub n: usize,
    /// k per quantisation block: a power of two ≥ 2 (MatMulNBits uses ≥ 16;
    /// blocked QDQ may use fewer).
    pub block: usize,
    /// The values are signed (int4/int8, else uint4/uint8).
    pub signed: bool,
    /// Bits per weight: 4 (two per byte, low nibble first) or 8
    /// (MatMulNBits `bits=8`: the same kernel, one byte per weight).
    pub bits: u8,
    /// Every zero point is an integer of magnitude below 2²² (ONNX zero
    /// points always are; [`Int4GemmSpec::integer_zero_points`]): `q − zp`
    /// is then one subtraction from the unpacked float. Otherwise the
    /// kernel subtracts `2²³` and then the zero point.
    pub integer_zero_points: bool,
}

/// The constant operands of an int4 GEMM.
#[derive(Clone, Copy, Debug)]
pub struct Int4Weights<'a> {
    /// `n × blocks × block·bits/8` bytes (4 bits: low nibble first).
    pub packed: &'a [u8],
    /// One scale per `(column, block)`, `n × blocks`.
    pub scales: &'a [f32],
    /// One zero point per `(column, block)`, or one for all.
    pub zero_points: &'a [f32],
}

/// Output columns computed together.
const COLUMNS: usize = 4;

/// 2²³: the float whose mantissa's low bits hold an unpacked weight.
const MAGIC: f32 = 8_388_608.0;

/// Its bits, ORed into a lane holding `q < 2²³`.
const MAGIC_BITS: u64 = 0x4B00_0000;

impl Int4GemmSpec {
    /// Whether `zero_points` all take the one-subtraction path (see
    /// [`Int4GemmSpec::integer_zero_points`]).
    pub fn integer_zero_points(zero_points: &[f32]) -> bool {
        zero_points
            .iter()
            .all(|z| z.fract() == 0.0 && z.abs() < (1 << 22) as f32)
    }

    /// What the stored bytes are offset by: the flipped sign bits of
    /// signed weights.
    fn flip(&self) -> (u8, f32) {
        match (self.signed, self.bits) {
            (false, _) => (0, 0.0),
            (true, 8) => (0x80, 128.0),
            (true, _) => (0x88, 8.0),
        }
    }

    fn blocks(&self) -> usize {
        self.k.div_ceil(self.block)
    }

    fn block_bytes(&self) -> usize {
        self.block * usize::from(self.bits) / 8
    }

    fn weight_bytes(&self) -> usize {
        self.n * self.blocks() * self.block_bytes()
    }

    /// Where the scale and zero-point tables start in the packed operand.
    fn table_offset(&self) -> usize {
        self.weight_bytes().next_multiple_of(64)
    }

    /// Checks the shape; the error says what is wrong.
    pub fn check(&self) -> Result<(), CodegenError> {
        if self.m == 0 || self.k == 0 || self.n == 0 {
            return Err(CodegenError::EmptyGemm {
                m: self.m,
                k: self.k,
                n: self.n,
            });
        }
        if self.bits != 4 && self.bits != 8 {
            return Err(CodegenError::Unsupported(format!(
                "a weight-only GEMM of {}-bit weights (4 or 8)",
                self.bits
            )));
        }
        if self.block < 2 || !self.block.is_power_of_two() {
            return Err(CodegenError::Unsupported(format!(
                "int4 GEMM with block size {} (a power of two ≥ 2 is needed)",
                self.block
            )));
        }
        Ok(())
    }

    /// The packed operand the kernel reads (its second buffer): the weight
    /// bytes unchanged, then the scales and zero points as f32 tables.
    pub fn pack(&self, w: &Int4Weights<'_>) -> Result<Vec<u8>, CodegenError> {
        self.check()?;
        let tables = self.n * self.blocks();
        let wrong = |what: &str, got: usize, want: usize| {
            CodegenError::Unsupported(format!(
                "int4 GEMM {what} of {got} elements, expected {want}"
            ))
        };
        if w.packed.len() != self.weight_bytes() {
            return Err(wrong("weights", w.packed.len(), self.weight_bytes()));
        }
        if w.scales.len() != tables {
            return Err(wrong("scales", w.scales.len(), tables));
        }
        if w.zero_points.len() != tables && w.zero_points.len() != 1 {
            return Err(wrong("zero points", w.zero_points.len(), tables));
        }
        if self.integer_zero_points && !Self::integer_zero_points(w.zero_points) {
            return Err(CodegenError::Unsupported(
                "int4 GEMM declared with integer zero points given fractional ones".into(),
            ));
        }
        // 8-bit blocks are stored as their even k, then their odd k: the
        // two vectors the 4-bit kernel gets from low and high nibbles.
        let (flip, shift) = self.flip();
        let mut bytes: Vec<u8> = match self.bits {
            8 => w
                .packed
                .chunks(self.block)
                .flat_map(|b| b.iter().step_by(2).chain(b.iter().skip(1).step_by(2)))
                .map(|b| b ^ flip)
                .collect(),
            _ => w.packed.iter().map(|b| b ^ flip).collect(),
        };
        bytes.resize(self.table_offset(), 0);
        bytes.extend(w.scales.iter().flat_map(|s| s.to_le_bytes()));
        // What the kernel subtracts from `2²³ + stored`: the zero point
        // moved by the flip, plus 2²³ when that stays exact.
        let magic = if self.integer_zero_points { MAGIC } else { 0.0 };
        for i in 0..tables {
            let zp = w.zero_points[if w.zero_points.len() == 1 { 0 } else { i }];
            bytes.extend((magic + (zp + shift)).to_le_bytes());
        }
        Ok(bytes)
    }

    /// Iterations of the kernel (output columns).
    pub fn extent(&self) -> usize {
        self.n
    }

    /// Scratch bytes per thread: x de-interleaved, blocks padded with 0.
    pub fn scratch_bytes(&self) -> usize {
        self.m * self.blocks() * self.block * 4
    }

    /// Bytes of weights (with their scales and zero points) one call
    /// streams: what decode's bandwidth is measured against.
    pub fn streamed_bytes(&self) -> usize {
        self.weight_bytes() + self.n * self.blocks() * 8
    }
}

/// Emits the kernel `spec.symbol` with buffers `[x, packed, y]`.
pub(crate) fn emit(cx: Cx<'_, '_>, spec: &Int4GemmSpec) -> Result<(), CodegenError> {
    spec.check()?;
    let k = Kernel::define(cx, &spec.symbol, 3)?;
    let em = &k.em;
    let f32t = cx.context.f32_type();
    let (x, packed, y) = (k.buffers[0], k.buffers[1], k.buffers[2]);
    let padded = spec.blocks() * spec.block;
    let half = padded / 2;
    // De-interleave x into the scratch: row r holds x[r, 0], x[r, 2], …
    // then x[r, 1], x[r, 3], …, zero past K.
    em.counted_loop(em.i64(0), em.i64(spec.m), |r| {
        em.counted_loop(em.i64(0), em.i64(padded), |kk| {
            let inside = em.builder.build_int_compare(
                inkwell::IntPredicate::ULT,
                kk,
                em.i64(spec.k),
                "inside",
            )?;
            let from = em.mul_add(r, em.i64(spec.k), em.umin(kk, em.i64(spec.k - 1))?)?;
            let value = em
                .builder
                .build_load(f32t, em.float_offset(x, from)?, "x")?
                .into_float_value();
            let value = em
                .builder
                .build_select(inside, value, f32t.const_zero(), "x")?;
            let odd = em.builder.build_and(kk, em.i64(1), "odd")?;
            let pair = em.builder.build_right_shift(kk, em.i64(1), false, "pair")?;
            let slot = em.mul_add(odd, em.i64(half), pair)?;
            let to = em.mul_add(r, em.i64(padded), slot)?;
            em.builder
                .build_store(em.float_offset(k.scratch, to)?, value)?;
            Ok(())
        })
    })?;
    let end = em.umin(k.end, em.i64(spec.n))?;
    let span = em.builder.build_int_sub(end, k.begin, "span")?;
    let quads = em
        .builder
        .build_int_unsigned_div(span, em.i64(COLUMNS), "quads")?;
    let columns = Columns {
        k: &k,
        spec,
        packed,
        y,
    };
    em.counted_loop(em.i64(0), quads, |q| {
        let first = em.mul_add(q, em.i64(COLUMNS), k.begin)?;
        columns.emit(first, COLUMNS)
    })?;
    let rest = em.mul_add(quads, em.i64(COLUMNS), k.begin)?;
    em.counted_loop(rest, end, |column| columns.emit(column, 1))?;
    k.finish()
}

/// The code computing a group of adjacent output columns for every row.
struct Columns<'k, 'a, 'ctx> {
    k: &'k Kernel<'a, 'ctx>,
    spec: &'k Int4GemmSpec,
    packed: PointerValue<'ctx>,
    y: PointerValue<'ctx>,
}

impl<'ctx> Columns<'_, '_, 'ctx> {
    /// Columns `first..first + count` of every row of y.
    fn emit(&self, first: IntValue<'ctx>, count: usize) -> Result<(), CodegenError> {
        let (k, spec) = (self.k, self.spec);
        let em = &k.em;
        let context = k.cx.context;
        // Each block is two halves of `block/2` weights (even and odd k).
        let half_block = spec.block / 2;
        let width = (k.cx.lanes() as usize).min(half_block) as u32;
        let chunks = half_block / width as usize;
        let f32v = context.f32_type().vec_type(width);
        let blocks = spec.blocks();
        let padded = blocks * spec.block;
        let accs = (0..count)
            .map(|_| k.slot(f32v.into()))
            .collect::<Result<Vec<_>, _>>()?;
        let tables = byte_offset(em, self.packed, em.i64(spec.table_offset()))?;
        let zero_points = byte_offset(em, tables, em.i64(spec.n * blocks * 4))?;
        em.counted_loop(em.i64(0), em.i64(spec.m), |r| {
            for acc in &accs {
                em.builder.build_store(*acc, f32v.const_zero())?;
            }
            let x_row = em.float_offset(
                k.scratch,
                em.builder.build_int_mul(r, em.i64(padded), "x_row")?,
            )?;
            em.counted_loop(em.i64(0), em.i64(blocks), |b| {
                for (j, acc) in accs.iter().enumerate() {
                    let column = em.builder.build_int_add(first, em.i64(j), "column")?;
                    let entry = em.mul_add(column, em.i64(blocks), b)?;
                    let load_table =
                        |base: PointerValue<'ctx>| -> Result<VectorValue<'ctx>, CodegenError> {
                            let v = em
                                .builder
                                .build_load(context.f32_type(), em.float_offset(base, entry)?, "t")?
                                .into_float_value();
                            em.splat(v, f32v)
                        };
                    let (scale, zero_point) = (load_table(tables)?, load_table(zero_points)?);
                    let weights = byte_offset(
                        em,
                        self.packed,
                        em.builder
                            .build_int_mul(entry, em.i64(spec.block_bytes()), "w")?,
                    )?;
                    prefetch(k, weights, 2 * count * blocks * spec.block_bytes())?;
                    // Σ x·(q − zp) over the block, then times its scale.
                    let mut sum = f32v.const_zero();
                    for c in 0..chunks {
                        let load = |at: usize| -> Result<VectorValue<'ctx>, CodegenError> {
                            let bytes = load_unaligned(
                                em,
                                context.i8_type().vec_type(width),
                                byte_offset(em, weights, em.i64(at))?,
                            )?;
                            Ok(em.builder.build_int_z_extend(
                                bytes,
                                context.i32_type().vec_type(width),
                                "w32",
                            )?)
                        };
                        let lanes = load(c * width as usize)?;
                        let (low, high) = match spec.bits {
                            8 => (lanes, load(half_block + c * width as usize)?),
                            _ => self.nibbles(lanes)?,
                        };
                        let pair = em.mul_add(b, em.i64(half_block), em.i64(c * width as usize))?;
                        for (half, stored) in [(0, low), (1, high)] {
                            let w = self.centred(stored, zero_point)?;
                            let at = em.builder.build_int_add(
                                pair,
                                em.i64(half * padded / 2),
                                "x_at",
                            )?;
                            let xv = em.load_vector(f32v, em.float_offset(x_row, at)?)?;
                            sum = em
                                .call_value(
                                    "llvm.fma",
                                    &[f32v.into()],
                                    &[xv.into(), w.into(), sum.into()],
                                )?
                                .into_vector_value();
                        }
                    }
                    let old = em
                        .builder
                        .build_load(f32v, *acc, "acc")?
                        .into_vector_value();
                    let total = em
                        .call_value(
                            "llvm.fma",
                            &[f32v.into()],
                            &[sum.into(), scale.into(), old.into()],
                        )?
                        .into_vector_value();
                    em.builder.build_store(*acc, total)?;
                }
                Ok(())
            })?;
            for (j, acc) in accs.iter().enumerate() {
                let sum = em
                    .builder
                    .build_load(f32v, *acc, "sum")?
                    .into_vector_value();
                let total = reduce_add(k, sum)?;
                let column = em.builder.build_int_add(first, em.i64(j), "column")?;
                let at = em.mul_add(r, em.i64(spec.n), column)?;
                em.builder
                    .build_store(em.float_offset(self.y, at)?, total)?;
            }
            Ok(())
        })
    }

    /// `q − zp` in f32 for i32 lanes holding the stored (unsigned) `q`:
    /// `q` ORed into the mantissa of 2²³ is the float `2²³ + q`, and the
    /// zero-point table holds `2²³ + zp` (or `zp` alone when it may be
    /// fractional: then 2²³ is subtracted first).
    fn centred(
        &self,
        stored: VectorValue<'ctx>,
        zero_point: VectorValue<'ctx>,
    ) -> Result<VectorValue<'ctx>, CodegenError> {
        let b = &self.k.em.builder;
        let context = self.k.cx.context;
        let lanes = stored.get_type().get_size() as usize;
        let magic_bits =
            VectorType::const_vector(&vec![
                context.i32_type().const_int(MAGIC_BITS, false);
                lanes
            ]);
        let f32v = context.f32_type().vec_type(lanes as u32);
        let float = b
            .build_bit_cast(b.build_or(stored, magic_bits, "q_magic")?, f32v, "q_f")?
            .into_vector_value();
        let float = if self.spec.integer_zero_points {
            float
        } else {
            let magic = VectorType::const_vector(&vec![
                context.f32_type().const_float(MAGIC.into());
                lanes
            ]);
            b.build_float_sub(float, magic, "q")?
        };
        Ok(b.build_float_sub(float, zero_point, "w")?)
    }

    /// The low and high nibbles of i32 lanes holding one byte each (even
    /// and odd k).
    fn nibbles(
        &self,
        lanes: VectorValue<'ctx>,
    ) -> Result<(VectorValue<'ctx>, VectorValue<'ctx>), CodegenError> {
        let b = &self.k.em.builder;
        let count = lanes.get_type().get_size() as usize;
        let i32t = self.k.cx.context.i32_type();
        let splat = |v: u64| VectorType::const_vector(&vec![i32t.const_int(v, false); count]);
        Ok((
            b.build_and(lanes, splat(0xF), "low")?,
            b.build_right_shift(lanes, splat(4), false, "high")?,
        ))
    }
}

/// Prefetches the weights `distance` bytes past `at`: the same block two
/// groups of columns on, so the lead is two groups' weights (measured
/// faster than one; a prefetch never faults, so running past the end is
/// harmless).
pub(super) fn prefetch<'ctx>(
    k: &Kernel<'_, 'ctx>,
    at: PointerValue<'ctx>,
    distance: usize,
) -> Result<(), CodegenError> {
    let em = &k.em;
    em.prefetch(em.context.i8_type().into(), at, em.i64(distance), false, 3)?;
    Ok(())
}

/// The sum of the lanes of `v` (a tree of halving adds).
fn reduce_add<'ctx>(
    k: &Kernel<'_, 'ctx>,
    v: VectorValue<'ctx>,
) -> Result<FloatValue<'ctx>, CodegenError> {
    let em = &k.em;
    let mut v = v;
    let i32t = em.context.i32_type();
    while v.get_type().get_size() > 1 {
        let half = v.get_type().get_size() / 2;
        let pick = |from: u32| {
            VectorType::const_vector(
                &(from..from + half)
                    .map(|i| i32t.const_int(u64::from(i), false))
                    .collect::<Vec<_>>(),
            )
        };
        let low = em.builder.build_shuffle_vector(v, v, pick(0), "low")?;
        let high = em.builder.build_shuffle_vector(v, v, pick(half), "high")?;
        v = em.builder.build_float_add(low, high, "sum")?;
    }
    Ok(em
        .builder
        .build_extract_element(v, i32t.const_zero(), "total")?
        .into_float_value())
}
