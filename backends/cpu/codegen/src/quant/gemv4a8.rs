//! The int4 GEMV/GEMM with int8 compute (`com.microsoft.MatMulNBits` with
//! `accuracy_level = 4`): `y[m×n] = x[m×k] · Wᵀ` where x is quantised to
//! int8 at run time in the weights' blocks along K and each block's dot
//! product is an integer one.
//!
//! The graph spells the activation's quantisation out (the importer's
//! `int8_blocks`): per row and block, `s = max |x| / 127` (1 for an
//! all-zero block) and `q = Quantize(x, s)`, round half to even; this
//! kernel computes the same `s` and `q` (same division, same rounding) into
//! its scratch once per call, with each block's `Σ q`. Then, per output
//! column and block, `Σ_k q·(w − zp)` is exact in i32 (`Σ q·w − zp·Σ q`)
//! and is scaled by `s · scale` into an f32 accumulator. The interpreter
//! multiplies the dequantised values in f32 instead, so the two agree to
//! f32 rounding, not bit for bit.
//!
//! Why: the f32 kernel (`gemv4.rs`) spends about five vector operations
//! per eight weights unpacking them into floats; here one 4·L-byte load
//! holds 8·L weights (L i32 lanes), split into low and high nibbles (three
//! operations), each fed to one four-way u8 × s8 dot product per lane
//! (`vpdpbusd`, `sdot`, or `vpmaddubsw` + `vpmaddwd` on AVX2, exact
//! because a nibble is at most 15). Output columns are the lanes: the
//! weights are repacked at compile time so that lane c of each load holds
//! column c's next four k of the low nibbles and the four after of the
//! high ones, and x's four matching int8 values are one broadcast word.
//! Per (column group, block) the scales (f32) and the zero points (one
//! byte each, widened in registers) follow the weights: what is streamed
//! per weight is what the model stores, plus a byte per block.

use inkwell::types::VectorType;
use inkwell::values::{IntValue, VectorValue};

use super::gemm8::{byte_offset, load_unaligned, splat_int};
use super::{DotKind, Int4Weights};
use crate::kernels::{Cx, Kernel};
use crate::{CodegenError, Isa, Target};

/// The largest block the kernel unrolls (eight k per step).
pub const MAX_BLOCK: usize = 256;

/// What one int8-compute int4 GEMM computes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Int4A8Spec {
    /// The exported kernel symbol.
    pub symbol: String,
    /// Rows of x and y (1 for decode).
    pub m: usize,
    /// The reduction length.
    pub k: usize,
    /// Output columns (rows of W).
    pub n: usize,
    /// k per quantisation block (of x and W alike): a power of two from 8
    /// to [`MAX_BLOCK`].
    pub block: usize,
    /// The weights are int4 (else uint4).
    pub signed: bool,
}

/// Bytes of one (column group, block) table entry per lane: an f32 scale
/// and a byte zero point.
const TABLE_BYTES: usize = 5;

impl Int4A8Spec {
    /// Whether the zero points fit the kernel's tables: integers in
    /// `0..=255` once moved by the stored sign flip (all of MatMulNBits'
    /// do).
    pub fn byte_zero_points(zero_points: &[f32], signed: bool) -> bool {
        let shift = if signed { 8.0 } else { 0.0 };
        zero_points
            .iter()
            .all(|&z| z.fract() == 0.0 && (0.0..=255.0).contains(&(z + shift)))
    }

    fn blocks(&self) -> usize {
        self.k.div_ceil(self.block)
    }

    /// k past K up to whole blocks.
    fn padded(&self) -> usize {
        self.blocks() * self.block
    }

    /// Loads per block: each covers eight k of every lane's column.
    fn steps(&self) -> usize {
        self.block / 8
    }

    fn groups(&self, lanes: usize) -> usize {
        self.n.div_ceil(lanes)
    }

    /// Bytes of one column group's weights.
    fn group_bytes(&self, lanes: usize) -> usize {
        self.blocks() * self.steps() * 4 * lanes
    }

    fn table_offset(&self, lanes: usize) -> usize {
        (self.groups(lanes) * self.group_bytes(lanes)).next_multiple_of(64)
    }

    /// Scratch offsets: the int8 rows, then per (row, block) `s`, then
    /// `Σ q` (f32 each).
    fn scratch_layout(&self) -> (usize, usize, usize) {
        let q = (self.m * self.padded()).next_multiple_of(64);
        let s = q + self.m * self.blocks() * 4;
        (q, s, s + self.m * self.blocks() * 4)
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
        if !(8..=MAX_BLOCK).contains(&self.block) || !self.block.is_power_of_two() {
            return Err(CodegenError::Unsupported(format!(
                "an int8-compute int4 GEMM with block size {} (a power of two from 8 to \
                 {MAX_BLOCK})",
                self.block
            )));
        }
        Ok(())
    }

    /// The packed operand (the kernel's second buffer): per column group
    /// of `L` (the target's lanes), block and step of eight k, `4·L`
    /// bytes — byte `i` of lane `c` holds k `8·step + i` of column `c` in
    /// its low nibble and k `8·step + 4 + i` in its high one, stored
    /// unsigned (int4 with the sign bit flipped, zero point moved by 8);
    /// then per (group, block) `L` scales (f32) and `L` zero points (u8).
    /// Columns past N are zero with scale 0.
    pub fn pack(&self, target: &Target, w: &Int4Weights<'_>) -> Result<Vec<u8>, CodegenError> {
        self.check()?;
        let (lanes, blocks) = (target.isa.f32_lanes(), self.blocks());
        let tables = self.n * blocks;
        let half = self.block / 2;
        let wrong = |what: &str, got: usize, want: usize| {
            CodegenError::Unsupported(format!(
                "int4 GEMM {what} of {got} elements, expected {want}"
            ))
        };
        if w.packed.len() != self.n * blocks * half {
            return Err(wrong("weights", w.packed.len(), self.n * blocks * half));
        }
        if w.scales.len() != tables {
            return Err(wrong("scales", w.scales.len(), tables));
        }
        if w.zero_points.len() != tables && w.zero_points.len() != 1 {
            return Err(wrong("zero points", w.zero_points.len(), tables));
        }
        if !Self::byte_zero_points(w.zero_points, self.signed) {
            return Err(CodegenError::Unsupported(
                "an int8-compute int4 GEMM with zero points that are not small integers".into(),
            ));
        }
        let (flip, shift) = if self.signed { (8, 8.0) } else { (0, 0.0) };
        let nibble = |column: usize, b: usize, j: usize| -> u8 {
            let byte = w.packed[(column * blocks + b) * half + j / 2];
            ((byte >> (4 * (j % 2))) & 0xF) ^ flip
        };
        let mut bytes = Vec::with_capacity(self.table_offset(lanes) + TABLE_BYTES * lanes * tables);
        for g in 0..self.groups(lanes) {
            for b in 0..blocks {
                for step in 0..self.steps() {
                    for c in 0..lanes {
                        let column = g * lanes + c;
                        for i in 0..4 {
                            bytes.push(if column < self.n {
                                let j = 8 * step + i;
                                nibble(column, b, j) | (nibble(column, b, j + 4) << 4)
                            } else {
                                0
                            });
                        }
                    }
                }
            }
        }
        bytes.resize(self.table_offset(lanes), 0);
        for g in 0..self.groups(lanes) {
            for b in 0..blocks {
                let entry =
                    |c: usize| (g * lanes + c < self.n).then(|| (g * lanes + c) * blocks + b);
                for c in 0..lanes {
                    let s = entry(c).map_or(0.0, |e| w.scales[e]);
                    bytes.extend(s.to_le_bytes());
                }
                for c in 0..lanes {
                    let z = entry(c).map_or(0.0, |e| {
                        w.zero_points[if w.zero_points.len() == 1 { 0 } else { e }] + shift
                    });
                    bytes.push(z as u8);
                }
            }
        }
        Ok(bytes)
    }

    /// Iterations of the kernel (groups of `L` output columns).
    pub fn extent(&self, target: &Target) -> usize {
        self.groups(target.isa.f32_lanes())
    }

    /// Bytes of weights (with their scales and zero points) one call
    /// streams: what decode's bandwidth is measured against.
    pub fn streamed_bytes(&self, target: &Target) -> usize {
        let lanes = target.isa.f32_lanes();
        self.groups(lanes) * (self.group_bytes(lanes) + self.blocks() * TABLE_BYTES * lanes)
    }

    /// Scratch bytes per thread: x as int8 with its scales and block sums.
    pub fn scratch_bytes(&self) -> usize {
        self.scratch_layout().2 + self.m * self.blocks() * 4
    }
}

/// Emits the kernel `spec.symbol` with buffers `[x, packed, y]`.
pub(crate) fn emit(cx: Cx<'_, '_>, spec: &Int4A8Spec) -> Result<(), CodegenError> {
    spec.check()?;
    let k = Kernel::define(cx, &spec.symbol, 3)?;
    quantise_rows(&k, spec)?;
    let lanes = cx.lanes() as usize;
    let em = &k.em;
    let end = em.umin(k.end, em.i64(spec.groups(lanes)))?;
    em.counted_loop(k.begin, end, |g| group(&k, spec, g))?;
    k.finish()
}

/// Quantises every row of x into the scratch: per block `s = max|x| / 127`
/// (1 when that is 0), `q = clamp(round_even(x / s))` as bytes, `Σ q`.
fn quantise_rows<'ctx>(k: &Kernel<'_, 'ctx>, spec: &Int4A8Spec) -> Result<(), CodegenError> {
    let em = &k.em;
    let b = &em.builder;
    let context = k.cx.context;
    let lanes = k.cx.lanes().min(spec.block as u32);
    let f32t = context.f32_type();
    let f32v = f32t.vec_type(lanes);
    let i32v = context.i32_type().vec_type(lanes);
    let i8v = context.i8_type().vec_type(lanes);
    let vectors = spec.block / lanes as usize;
    let (s_at, sum_at) = (spec.scratch_layout().1, spec.scratch_layout().2);
    let x = k.buffers[0];
    let splat = |v: f64| VectorType::const_vector(&vec![f32t.const_float(v); lanes as usize]);
    let call =
        |name: &str, args: &[VectorValue<'ctx>]| -> Result<VectorValue<'ctx>, CodegenError> {
            let args: Vec<_> = args.iter().map(|&a| a.into()).collect();
            Ok(em
                .call_value(name, &[f32v.into()], &args)?
                .into_vector_value())
        };
    // Block `blk` of row `r`: whole vectors, or the partial last block
    // (`valid` k of it in x, the rest taken as 0).
    let block =
        |r: IntValue<'ctx>, blk: IntValue<'ctx>, valid: usize| -> Result<(), CodegenError> {
            let first = em.builder.build_int_mul(blk, em.i64(spec.block), "first")?;
            let row_x = em.mul_add(r, em.i64(spec.k), first)?;
            let mut values = Vec::with_capacity(vectors);
            for v in 0..vectors {
                let from = v * lanes as usize;
                let at = em.float_offset(x, b.build_int_add(row_x, em.i64(from), "x_at")?)?;
                values.push(match valid.saturating_sub(from) {
                    0 => f32v.const_zero(),
                    n if n >= lanes as usize => em.load_vector(f32v, at)?,
                    n => k.masked_load(at, k.prefix_mask(lanes, n))?,
                });
            }
            let mut top = f32v.const_zero();
            for &v in &values {
                let abs = call("llvm.fabs", &[v])?;
                top = call("llvm.maxnum", &[top, abs])?;
            }
            let top = em
                .call_value("llvm.vector.reduce.fmax", &[f32v.into()], &[top.into()])?
                .into_float_value();
            let s = b.build_float_div(top, f32t.const_float(127.0), "s")?;
            let empty =
                b.build_float_compare(inkwell::FloatPredicate::OEQ, s, f32t.const_zero(), "empty")?;
            let s = b
                .build_select(empty, f32t.const_float(1.0), s, "s")?
                .into_float_value();
            let entry = em.mul_add(r, em.i64(spec.blocks()), blk)?;
            let table = |at: usize| byte_offset(em, k.scratch, em.i64(at));
            b.build_store(em.float_offset(table(s_at)?, entry)?, s)?;
            let sv = em.splat(s, f32v)?;
            let mut sum = i32v.const_zero();
            let row_q = em.mul_add(r, em.i64(spec.padded()), first)?;
            for (v, &value) in values.iter().enumerate() {
                let q = call("llvm.roundeven", &[b.build_float_div(value, sv, "x_s")?])?;
                let q = call("llvm.maxnum", &[q, splat(-128.0)])?;
                let q = call("llvm.minnum", &[q, splat(127.0)])?;
                let q = b.build_float_to_signed_int(q, i32v, "q")?;
                sum = b.build_int_add(sum, q, "sum")?;
                let at = b.build_int_add(row_q, em.i64(v * lanes as usize), "q_at")?;
                let bytes = b.build_int_truncate(q, i8v, "q8")?;
                b.build_store(byte_offset(em, k.scratch, at)?, bytes)?
                    .set_alignment(1)
                    .map_err(|e| CodegenError::Llvm(e.to_string()))?;
            }
            let sum = em
                .call_value("llvm.vector.reduce.add", &[i32v.into()], &[sum.into()])?
                .into_int_value();
            let sum = b.build_signed_int_to_float(sum, f32t, "sum_f")?;
            b.build_store(em.float_offset(table(sum_at)?, entry)?, sum)?;
            Ok(())
        };
    let full = spec.k / spec.block;
    em.counted_loop(em.i64(0), em.i64(spec.m), |r| {
        em.counted_loop(em.i64(0), em.i64(full), |blk| block(r, blk, spec.block))?;
        if full < spec.blocks() {
            block(r, em.i64(full), spec.k - full * spec.block)?;
        }
        Ok(())
    })
}

/// Column group `g` for every row of y.
fn group<'ctx>(
    k: &Kernel<'_, 'ctx>,
    spec: &Int4A8Spec,
    g: IntValue<'ctx>,
) -> Result<(), CodegenError> {
    let em = &k.em;
    let b = &em.builder;
    let context = k.cx.context;
    let lanes = k.cx.lanes();
    let f32v = context.f32_type().vec_type(lanes);
    let i32v = context.i32_type().vec_type(lanes);
    let bytes_v = context.i8_type().vec_type(4 * lanes);
    let (packed, y) = (k.buffers[1], k.buffers[2]);
    let dot = Dot {
        kind: DotKind::for_target(k.cx.target),
        isa: k.cx.target.isa,
    };
    let blocks = spec.blocks();
    let group_bytes = spec.group_bytes(lanes as usize);
    let weights = byte_offset(em, packed, b.build_int_mul(g, em.i64(group_bytes), "w")?)?;
    let tables = byte_offset(
        em,
        packed,
        em.mul_add(
            g,
            em.i64(blocks * TABLE_BYTES * lanes as usize),
            em.i64(spec.table_offset(lanes as usize)),
        )?,
    )?;
    let (_, s_at, sum_at) = spec.scratch_layout();
    let acc = k.slot(f32v.into())?;
    let nibble = splat_int(
        em,
        context.i8_type().const_int(0xF, false),
        4 * lanes as usize,
    )?;
    let four = splat_int(
        em,
        context.i8_type().const_int(4, false),
        4 * lanes as usize,
    )?;
    em.counted_loop(em.i64(0), em.i64(spec.m), |r| {
        b.build_store(acc, f32v.const_zero())?;
        let row_q = byte_offset(
            em,
            k.scratch,
            b.build_int_mul(r, em.i64(spec.padded()), "q")?,
        )?;
        em.counted_loop(em.i64(0), em.i64(blocks), |blk| {
            let block_w = byte_offset(
                em,
                weights,
                b.build_int_mul(blk, em.i64(spec.steps() * 4 * lanes as usize), "bw")?,
            )?;
            // Every cache line of the block two groups ahead: one
            // prefetch per block (half its lines) ran at half the speed.
            for line in (0..spec.steps() * 4 * lanes as usize).step_by(64) {
                let at = byte_offset(em, block_w, em.i64(line))?;
                super::gemv4::prefetch(k, at, 2 * group_bytes)?;
            }
            let block_q = byte_offset(em, row_q, b.build_int_mul(blk, em.i64(spec.block), "bq")?)?;
            let mut sums = i32v.const_zero();
            for step in 0..spec.steps() {
                let w = load_unaligned(
                    em,
                    bytes_v,
                    byte_offset(em, block_w, em.i64(step * 4 * lanes as usize))?,
                )?;
                let low = b.build_and(w, nibble, "low")?;
                let high =
                    b.build_and(b.build_right_shift(w, four, false, "hi")?, nibble, "high")?;
                let word = |at: usize| -> Result<VectorValue<'ctx>, CodegenError> {
                    let word = b.build_load(
                        context.i32_type(),
                        byte_offset(em, block_q, em.i64(at))?,
                        "x4",
                    )?;
                    inkwell::values::BasicValue::as_instruction_value(&word)
                        .ok_or_else(|| CodegenError::Llvm("a load built no instruction".into()))?
                        .set_alignment(1)
                        .map_err(|e| CodegenError::Llvm(e.to_string()))?;
                    let splat = splat_int(em, word.into_int_value(), lanes as usize)?;
                    Ok(b.build_bit_cast(splat, bytes_v, "x4v")?.into_vector_value())
                };
                sums = dot.pair(
                    em,
                    sums,
                    [(low, word(8 * step)?), (high, word(8 * step + 4)?)],
                )?;
            }
            let entry = em.mul_add(r, em.i64(blocks), blk)?;
            let scalar = |at: usize| -> Result<VectorValue<'ctx>, CodegenError> {
                let table = byte_offset(em, k.scratch, em.i64(at))?;
                let v = b
                    .build_load(context.f32_type(), em.float_offset(table, entry)?, "t")?
                    .into_float_value();
                em.splat(v, f32v)
            };
            let entry_at = byte_offset(
                em,
                tables,
                b.build_int_mul(blk, em.i64(TABLE_BYTES * lanes as usize), "entry")?,
            )?;
            let scale = em.load_vector(f32v, entry_at)?;
            let zero_point = load_unaligned(
                em,
                context.i8_type().vec_type(lanes),
                byte_offset(em, entry_at, em.i64(4 * lanes as usize))?,
            )?;
            let zero_point = b.build_unsigned_int_to_float(zero_point, f32v, "zp")?;
            // Σ q·(w − zp) = Σ q·w − zp·Σ q, exact in f32 (|·| < 2²⁴).
            let total = b.build_signed_int_to_float(sums, f32v, "dot")?;
            let minus_zp = b.build_float_neg(zero_point, "minus_zp")?;
            let centred = fma(em, minus_zp, scalar(sum_at)?, total)?;
            let scale = b.build_float_mul(scale, scalar(s_at)?, "scale")?;
            let old = b.build_load(f32v, acc, "acc")?.into_vector_value();
            b.build_store(acc, fma(em, centred, scale, old)?)?;
            Ok(())
        })?;
        let value = b.build_load(f32v, acc, "y")?.into_vector_value();
        let first = b.build_int_mul(g, em.i64(lanes as usize), "column")?;
        let at = em.float_offset(y, em.mul_add(r, em.i64(spec.n), first)?)?;
        let whole = spec.n / lanes as usize;
        let is_whole =
            b.build_int_compare(inkwell::IntPredicate::ULT, g, em.i64(whole), "whole")?;
        em.if_then(is_whole, || em.store_vector(at, value))?;
        if whole * (lanes as usize) < spec.n {
            let last = b.build_int_compare(inkwell::IntPredicate::EQ, g, em.i64(whole), "last")?;
            let mask = k.prefix_mask(lanes, spec.n - whole * lanes as usize);
            em.if_then(last, || k.masked_store(at, value, mask))?;
        }
        Ok(())
    })
}

/// `a·b + c` on f32 vectors.
fn fma<'ctx>(
    em: &crate::ir::Emitter<'_, 'ctx>,
    a: VectorValue<'ctx>,
    b: VectorValue<'ctx>,
    c: VectorValue<'ctx>,
) -> Result<VectorValue<'ctx>, CodegenError> {
    Ok(em
        .call_value(
            "llvm.fma",
            &[a.get_type().into()],
            &[a.into(), b.into(), c.into()],
        )?
        .into_vector_value())
}

/// The target's four-way u8 × s8 dot product into i32 lanes.
struct Dot {
    kind: DotKind,
    isa: Isa,
}

impl Dot {
    /// `acc + Σ` over both (unsigned nibbles, signed x) pairs of each lane's
    /// four bytes.
    fn pair<'ctx>(
        &self,
        em: &crate::ir::Emitter<'_, 'ctx>,
        acc: VectorValue<'ctx>,
        pairs: [(VectorValue<'ctx>, VectorValue<'ctx>); 2],
    ) -> Result<VectorValue<'ctx>, CodegenError> {
        let b = &em.builder;
        let i32v = acc.get_type();
        let call =
            |name: &str, args: &[VectorValue<'ctx>]| -> Result<VectorValue<'ctx>, CodegenError> {
                let args: Vec<_> = args.iter().map(|&a| a.into()).collect();
                Ok(em.call_value(name, &[], &args)?.into_vector_value())
            };
        let words = |v: VectorValue<'ctx>| -> Result<VectorValue<'ctx>, CodegenError> {
            Ok(b.build_bit_cast(v, i32v, "words")?.into_vector_value())
        };
        match self.kind {
            DotKind::Vnni => {
                let name = match self.isa {
                    Isa::Avx512 => "llvm.x86.avx512.vpdpbusd.512",
                    _ => "llvm.x86.avx512.vpdpbusd.256",
                };
                let mut acc = acc;
                for (w, x) in pairs {
                    acc = call(name, &[acc, words(w)?, words(x)?])?;
                }
                Ok(acc)
            }
            DotKind::Pmaddwd => {
                // u8 × s8 pairs into i16: at most 2·15·128 each, so neither
                // they nor the two pairs' sum saturate.
                let (bytes, words16, ones) = match self.isa {
                    Isa::Avx512 => (
                        "llvm.x86.avx512.pmaddubs.w.512",
                        "llvm.x86.avx512.pmaddw.d.512",
                        32,
                    ),
                    _ => ("llvm.x86.avx2.pmadd.ub.sw", "llvm.x86.avx2.pmadd.wd", 16),
                };
                let [(w0, x0), (w1, x1)] = pairs;
                let sum =
                    b.build_int_add(call(bytes, &[w0, x0])?, call(bytes, &[w1, x1])?, "pairs")?;
                let one = splat_int(em, em.context.i16_type().const_int(1, false), ones)?;
                let quads = call(words16, &[sum, one])?;
                Ok(b.build_int_add(acc, quads, "acc")?)
            }
            DotKind::Sdot => {
                let mut acc = acc;
                for (w, x) in pairs {
                    acc = em
                        .call_value(
                            "llvm.aarch64.neon.sdot",
                            &[i32v.into(), w.get_type().into()],
                            &[acc.into(), w.into(), x.into()],
                        )?
                        .into_vector_value();
                }
                Ok(acc)
            }
            DotKind::Generic => {
                let wide = i32v
                    .get_element_type()
                    .into_int_type()
                    .vec_type(4 * i32v.get_size());
                let mut acc = acc;
                for (w, x) in pairs {
                    let products = b.build_int_mul(
                        b.build_int_z_extend(w, wide, "w32")?,
                        b.build_int_s_extend(x, wide, "x32")?,
                        "products",
                    )?;
                    acc = b.build_int_add(acc, sum_fours(em, products)?, "acc")?;
                }
                Ok(acc)
            }
        }
    }
}

/// Lane `c` of the result is the sum of lanes `4c..4c + 4` of `v`.
fn sum_fours<'ctx>(
    em: &crate::ir::Emitter<'_, 'ctx>,
    v: VectorValue<'ctx>,
) -> Result<VectorValue<'ctx>, CodegenError> {
    let b = &em.builder;
    let i32t = em.context.i32_type();
    let mut v = v;
    for _ in 0..2 {
        let half = v.get_type().get_size() / 2;
        let pick = |odd: u32| {
            VectorType::const_vector(
                &(0..half)
                    .map(|i| i32t.const_int(u64::from(2 * i + odd), false))
                    .collect::<Vec<_>>(),
            )
        };
        let even = b.build_shuffle_vector(v, v, pick(0), "even")?;
        let odd = b.build_shuffle_vector(v, v, pick(1), "odd")?;
        v = b.build_int_add(even, odd, "sum")?;
    }
    Ok(v)
}
