//! int8 attention: the pattern and the integer pieces of the attention
//! kernel (`kernels/attention.rs`) when both of its products are
//! quantised — `MatMul(DQ(q), DQ(k))`, the scale/mask group, Softmax,
//! `DQ(Quantize(probabilities))`, `MatMul(·, DQ(v))`, as `m4c quantize`
//! and onnxruntime's `quantize_static` write a transformer's attention.
//!
//! The model's arithmetic is f32 over dequantised values; every operand
//! is `(x − z)·s` with x int8/uint8, so each product is `s_a·s_b ·
//! Σ_k (a − za)(b − zb)`, an exact integer sum times one factor. The
//! kernel computes that sum with the int8 GEMM ([`Int8GemmSpec`]) — 4× the
//! products per instruction of the f32 one — with B packed at run time
//! (per head, [`emit_pack_b`]): B is stored uncentred (its zero point
//! need not leave `b − zb` in int8), so A's row sums
//! ([`emit_row_sums`]) carry the `zb·Σ a` term and the constant
//! `K·za·zb` goes into the integer bias. The probabilities are quantised
//! as the model's `Quantize` does ([`emit_quantize_rows`]), in the block,
//! and never leave the cache.

use inkwell::types::VectorType;
use inkwell::values::{IntValue, PointerValue};
use m4c_ir::{DType, Op, ValueId};

use super::epilogue::{quantize_with_zero_point, store_masked};
use super::gemm8::{byte_offset, Constant, Layout};
use super::lower::{f32_scalar, int_scalar, Kind, Matched, Uses};
use super::pattern8::a_operand;
use super::{DotKind, Int8GemmSpec, Int8Output, Int8Runtime};
use crate::kernels::attention::Chain;
use crate::kernels::Kernel;
use crate::{CodegenError, Target};

/// A run-time int8/uint8 tensor with one constant zero point and scale:
/// an operand of int8 attention, or its quantised probabilities.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct PerTensor {
    pub value: ValueId,
    pub signed: bool,
    pub zero_point: i32,
    pub scale: f32,
}

/// An attention chain whose products are int8 ([`find`]).
#[derive(Clone, Debug)]
pub(crate) struct Int8Attention {
    pub chain: Chain,
    /// The elementwise nodes between the scores and the softmax (the
    /// chain's group, root last).
    pub group: Option<Vec<usize>>,
    /// The scores' operands: `q · k`.
    pub q: PerTensor,
    pub k: PerTensor,
    /// The output product's right operand.
    pub v: PerTensor,
    /// The probabilities' `Quantize` (its scale and zero point; `value` is
    /// its result).
    pub quantize: PerTensor,
    /// The dequantisation the output product reads them through.
    pub probabilities: PerTensor,
    /// The values the kernel reads itself: the quantised operands and the
    /// group's other run-time operands.
    pub reads: Vec<ValueId>,
}

/// The run-time values the nodes `group` read from outside it, other
/// than `scores`.
fn group_reads(uses: &Uses<'_>, group: &[usize], scores: ValueId) -> Vec<ValueId> {
    let inside: Vec<ValueId> = group.iter().map(|&i| uses.g.nodes[i].output).collect();
    let mut reads = Vec::new();
    for &i in group {
        for &input in &uses.g.nodes[i].inputs {
            if input != scores
                && !inside.contains(&input)
                && uses.constant(input).is_none()
                && !reads.contains(&input)
            {
                reads.push(input);
            }
        }
    }
    reads
}

/// The int8 form of the attention `chain` (`members`: the fusion groups'
/// members by root), with the dequantisation nodes it reads through: both
/// products' operands dequantised per tensor from run-time int8/uint8
/// values with constant parameters, and the group after the softmax
/// exactly the probabilities' `Quantize` and the dequantisation the
/// output product reads.
pub(super) fn find(
    uses: &Uses<'_>,
    chain: Chain,
    members: &[Vec<usize>],
) -> Option<(Matched, Vec<usize>)> {
    let g = uses.g;
    let (scores, output) = (&g.nodes[chain.scores], &g.nodes[chain.output]);
    let operand = |value: ValueId| {
        let a = a_operand(uses, value).filter(|a| a.runtime_zero.is_none())?;
        Some((
            PerTensor {
                value: a.q,
                signed: a.signed,
                zero_point: a.zero_point,
                scale: a.scale,
            },
            a.nodes,
        ))
    };
    let (q, q_nodes) = operand(scores.inputs[0])?;
    let (k, k_nodes) = operand(scores.inputs[1])?;
    let (v, v_nodes) = operand(output.inputs[1])?;
    let (probabilities, dequant_nodes) = operand(output.inputs[0])?;
    let (quantize_node, Op::Quantize { to }, [x, scale, zero]) = uses.def(probabilities.value)?
    else {
        return None;
    };
    let quantize = PerTensor {
        value: probabilities.value,
        signed: *to == DType::I8,
        zero_point: int_scalar(uses.constant(*zero)?)?,
        scale: f32_scalar(uses.constant(*scale)?)?,
    };
    let after = &members[chain.after?];
    let mut expected = dequant_nodes;
    expected.push(quantize_node);
    let exact = *x == g.nodes[chain.softmax].output
        && matches!(to, DType::I8 | DType::U8)
        && after.len() == expected.len()
        && expected.iter().all(|n| after.contains(n));
    if !exact {
        return None;
    }
    let group = chain.group.map(|root| members[root].clone());
    let mut kernel_reads = vec![q.value, k.value, v.value];
    if let Some(group) = &group {
        kernel_reads.extend(group_reads(uses, group, scores.output));
    }
    let mut core = vec![chain.scores, chain.softmax, chain.output];
    core.extend(group.iter().flatten());
    core.extend(after);
    core.sort_unstable();
    let mut reads = q_nodes;
    reads.extend(k_nodes);
    reads.extend(v_nodes);
    Some((
        Matched {
            output: chain.output,
            core,
            kind: Kind::Attention8(Box::new(Int8Attention {
                chain,
                group,
                q,
                k,
                v,
                quantize,
                probabilities,
                reads: kernel_reads,
            })),
        },
        reads,
    ))
}

/// One of the kernel's two products: `a · b` over `k`, `n` columns, for
/// blocks of rows of A.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Product {
    pub k: usize,
    pub n: usize,
    pub a: PerTensor,
    pub b: PerTensor,
}

impl Product {
    /// The int8 GEMM of a block of `rows` rows: f32 output `Σ·s_a·s_b`,
    /// A's row sums read at run time.
    pub(crate) fn spec(&self, symbol: &str, rows: usize) -> Int8GemmSpec {
        Int8GemmSpec {
            symbol: symbol.into(),
            m: rows,
            k: self.k,
            n: self.n,
            a_signed: self.a.signed,
            a_zero_point: self.a.zero_point,
            output: Int8Output::F32,
            runtime: Int8Runtime {
                row_sums: true,
                ..Int8Runtime::default()
            },
        }
    }

    /// Bytes of B packed with its tables.
    pub(crate) fn packed_bytes(&self, target: &Target) -> usize {
        Layout::new(target, &self.spec("", 1)).packed_bytes()
    }

    /// B panels of the GEMM (its iterations).
    pub(crate) fn panels(&self, target: &Target) -> usize {
        self.spec("", 1).extent(target)
    }

    /// B's zero point in the products' domain (int8: a uint8 B has its
    /// sign bit flipped when packed).
    fn b_zero_point(&self) -> i32 {
        self.b.zero_point - if self.b.signed { 0 } else { 128 }
    }
}

/// Writes the parts of the packed B at `packed` that do not depend on B:
/// the multiplier, bias, sign and integer bias tables (`K·za·zb`, the
/// constant term of the centred product) and the constants.
pub(crate) fn emit_tables<'ctx>(
    k: &Kernel<'_, 'ctx>,
    product: &Product,
    packed: PointerValue<'ctx>,
) -> Result<(), CodegenError> {
    let target = k.cx.target;
    let spec = product.spec("", 1);
    let layout = Layout::new(target, &spec);
    let dot = DotKind::for_target(target);
    let shift = (i64::from(product.a.zero_point) + dot.a_shift(product.a.signed)) as i32;
    let b_zero = product.b_zero_point();
    let int_bias = (product.k as i32).wrapping_mul(shift).wrapping_mul(b_zero);
    let multiplier = product.a.scale * product.b.scale;
    let em = &k.em;
    let i32t = k.cx.context.i32_type();
    let tables = byte_offset(em, packed, em.i64(layout.table_offset()))?;
    let len = layout.table_len();
    // The tables after the column sums (table 0, per head): multiplier,
    // f32 bias, sign, i32 bias ([`Int8GemmSpec::pack`]'s order).
    let words = [
        (1, multiplier.to_bits()),
        (2, 0.0f32.to_bits()),
        (3, 1),
        (4, int_bias as u32),
    ];
    em.counted_loop(em.i64(0), em.i64(len), |j| {
        for (table, word) in words {
            let at = em.builder.build_int_add(j, em.i64(table * len), "entry")?;
            let at = em.builder.build_int_mul(at, em.i64(4), "entry")?;
            let at = byte_offset(em, tables, at)?;
            em.builder
                .build_store(at, i32t.const_int(u64::from(word), false))?;
        }
        Ok(())
    })?;
    for (c, word) in [
        (Constant::Shift, shift as u32),
        (Constant::OutScale, 0),
        (Constant::OutZeroPoint, 0),
        (Constant::BZeroPoint, b_zero as u32),
    ] {
        let at = byte_offset(em, tables, em.i64(layout.constant_offset(c)))?;
        em.builder
            .build_store(at, i32t.const_int(u64::from(word), false))?;
    }
    Ok(())
}

/// The packed B's layout on the kernel's target: k per group, columns
/// per panel, bytes per stored element.
struct Packing {
    layout: Layout,
    g: usize,
    nr: usize,
    width: usize,
}

impl Packing {
    fn of(k: &Kernel<'_, '_>, product: &Product) -> Self {
        let layout = Layout::new(k.cx.target, &product.spec("", 1));
        let dot = DotKind::for_target(k.cx.target);
        Packing {
            layout,
            g: dot.group(),
            nr: layout.nr(),
            width: dot.b_bytes(),
        }
    }
}

/// Packs B (`k × n` int8/uint8 at `b`, element strides `(row, column)`)
/// into the GEMM's panels at `packed`, as int8 (a uint8 B with its sign
/// bit flipped), and writes its column sums (table 0). Padding is zero.
/// Whole panels of a B whose columns are contiguous (K of ViT's scores
/// stored `[k, n]`, V) are packed a group of rows at a time in vectors
/// ([`emit_pack_panels`]); other columns one element at a time.
pub(crate) fn emit_pack_b<'ctx>(
    k: &Kernel<'_, 'ctx>,
    product: &Product,
    b: PointerValue<'ctx>,
    (row_stride, col_stride): (i64, i64),
    packed: PointerValue<'ctx>,
) -> Result<(), CodegenError> {
    let Packing {
        layout,
        g,
        nr,
        width,
    } = Packing::of(k, product);
    let em = &k.em;
    let context = k.cx.context;
    let (i8t, i16t, i32t) = (context.i8_type(), context.i16_type(), context.i32_type());
    let vector_panels = if col_stride == 1 { product.n / nr } else { 0 };
    if vector_panels > 0 {
        emit_pack_panels(k, product, b, row_stride, vector_panels, packed)?;
    }
    let first = vector_panels * nr;
    if first == product.n {
        return Ok(());
    }
    // The rest, element by element, over zeroed panels.
    let from = em.i64(vector_panels * layout.panel_bytes());
    em.builder.build_memset(
        byte_offset(em, packed, from)?,
        1,
        i8t.const_zero(),
        em.i64(layout.table_offset() - vector_panels * layout.panel_bytes()),
    )?;
    let tables = byte_offset(em, packed, em.i64(layout.table_offset()))?;
    let sum = k.slot(i32t.into())?;
    em.counted_loop(em.i64(first), em.i64(product.n), |j| {
        em.builder.build_store(sum, i32t.const_zero())?;
        let panel = em.builder.build_int_unsigned_div(j, em.i64(nr), "panel")?;
        let col = em.builder.build_int_unsigned_rem(j, em.i64(nr), "col")?;
        let panel_at = em
            .builder
            .build_int_mul(panel, em.i64(layout.panel_bytes()), "p")?;
        let column_at = em.mul_add(col, em.i64(g * width), panel_at)?;
        let source = em.builder.build_int_mul(j, k.int(col_stride), "src")?;
        em.counted_loop(em.i64(0), em.i64(product.k), |kk| {
            let from = em.mul_add(kk, k.int(row_stride), source)?;
            let mut byte = em
                .builder
                .build_load(i8t, byte_offset(em, b, from)?, "b")?
                .into_int_value();
            if !product.b.signed {
                byte = em
                    .builder
                    .build_xor(byte, i8t.const_int(0x80, false), "b_s8")?;
            }
            // ((kk / g)·nr + col)·g + kk % g elements into the panel.
            let group = em.builder.build_int_unsigned_div(kk, em.i64(g), "kg")?;
            let within = em.builder.build_int_unsigned_rem(kk, em.i64(g), "kr")?;
            let at = em.mul_add(group, em.i64(nr * g * width), column_at)?;
            let at = em.mul_add(within, em.i64(width), at)?;
            let at = byte_offset(em, packed, at)?;
            if width == 2 {
                let word = em.builder.build_int_s_extend(byte, i16t, "b16")?;
                em.builder.build_store(at, word)?;
            } else {
                em.builder.build_store(at, byte)?;
            }
            let wide = em.builder.build_int_s_extend(byte, i32t, "b32")?;
            let old = em.builder.build_load(i32t, sum, "sum")?.into_int_value();
            em.builder
                .build_store(sum, em.builder.build_int_add(old, wide, "sum")?)?;
            Ok(())
        })?;
        let at = byte_offset(em, tables, em.builder.build_int_mul(j, em.i64(4), "cs")?)?;
        em.builder
            .build_store(at, em.builder.build_load(i32t, sum, "sum")?)?;
        Ok(())
    })?;
    Ok(())
}

/// Packs the first `panels` whole panels of a B with contiguous columns:
/// per group of `g` rows, one vector of each row's `nr` columns, the
/// rows interleaved by one shuffle (column-major within the group, as
/// the dot instruction takes them) and stored at once; the column sums
/// accumulate in a vector per panel.
fn emit_pack_panels<'ctx>(
    k: &Kernel<'_, 'ctx>,
    product: &Product,
    b: PointerValue<'ctx>,
    row_stride: i64,
    panels: usize,
    packed: PointerValue<'ctx>,
) -> Result<(), CodegenError> {
    let Packing {
        layout,
        g,
        nr,
        width,
    } = Packing::of(k, product);
    let em = &k.em;
    let context = k.cx.context;
    let (i8t, i32t) = (context.i8_type(), context.i32_type());
    let (row_type, sums_type) = (i8t.vec_type(nr as u32), i32t.vec_type(nr as u32));
    let sums = k.slot(sums_type.into())?;
    // Element `col·g + r` of a group comes from row r, column col.
    let interleave = VectorType::const_vector(
        &(0..nr * g)
            .map(|i| i32t.const_int(((i % g) * nr + i / g) as u64, false))
            .collect::<Vec<_>>(),
    );
    let tables = byte_offset(em, packed, em.i64(layout.table_offset()))?;
    em.counted_loop(em.i64(0), em.i64(panels), |panel| {
        em.builder.build_store(sums, sums_type.const_zero())?;
        let column = em.builder.build_int_mul(panel, em.i64(nr), "col")?;
        let panel_at = em
            .builder
            .build_int_mul(panel, em.i64(layout.panel_bytes()), "p")?;
        // Group `group` (`count` rows of it inside K).
        let pack_group = |group: IntValue<'ctx>, count: usize| -> Result<(), CodegenError> {
            let mut rows = Vec::with_capacity(g);
            let first = em.builder.build_int_mul(group, em.i64(g), "k0")?;
            for r in 0..g {
                if r >= count {
                    rows.push(row_type.const_zero());
                    continue;
                }
                let kk = em.builder.build_int_add(first, em.i64(r), "k")?;
                let at = em.mul_add(kk, k.int(row_stride), column)?;
                let mut row = super::gemm8::load_unaligned(em, row_type, byte_offset(em, b, at)?)?;
                if !product.b.signed {
                    let flip = VectorType::const_vector(&vec![i8t.const_int(0x80, false); nr]);
                    row = em.builder.build_xor(row, flip, "b_s8")?;
                }
                let wide = em.builder.build_int_s_extend(row, sums_type, "wide")?;
                let old = em
                    .builder
                    .build_load(sums_type, sums, "sums")?
                    .into_vector_value();
                em.builder
                    .build_store(sums, em.builder.build_int_add(old, wide, "sums")?)?;
                rows.push(row);
            }
            // Concatenate the rows (pairwise), then interleave them.
            while rows.len() > 1 {
                let len = rows[0].get_type().get_size() as usize;
                let concat = VectorType::const_vector(
                    &(0..2 * len)
                        .map(|i| i32t.const_int(i as u64, false))
                        .collect::<Vec<_>>(),
                );
                rows = rows
                    .chunks(2)
                    .map(|pair| {
                        em.builder
                            .build_shuffle_vector(pair[0], pair[1], concat, "rows")
                    })
                    .collect::<Result<_, _>>()?;
            }
            let all = rows[0];
            let mut group_bytes = em.builder.build_shuffle_vector(
                all,
                all.get_type().get_poison(),
                interleave,
                "group",
            )?;
            if width == 2 {
                group_bytes = em.builder.build_int_s_extend(
                    group_bytes,
                    context.i16_type().vec_type((nr * g) as u32),
                    "words",
                )?;
            }
            let at = em.mul_add(group, em.i64(layout.group_bytes()), panel_at)?;
            em.builder
                .build_store(byte_offset(em, packed, at)?, group_bytes)?
                .set_alignment(1)
                .map_err(|e| CodegenError::Llvm(e.to_string()))?;
            Ok(())
        };
        em.counted_loop(em.i64(0), em.i64(product.k / g), |group| {
            pack_group(group, g)
        })?;
        if !product.k.is_multiple_of(g) {
            pack_group(em.i64(product.k / g), product.k % g)?;
        }
        let at = em.builder.build_int_mul(column, em.i64(4), "cs")?;
        let total = em.builder.build_load(sums_type, sums, "sums")?;
        em.builder
            .build_store(byte_offset(em, tables, at)?, total)?
            .set_alignment(4)
            .map_err(|e| CodegenError::Llvm(e.to_string()))?;
        Ok(())
    })
}

/// Writes the row sums of `rows` rows of `len` int8/uint8 values at `a`
/// (row stride `len`) into `sums` (i32 each), each value taken in the
/// domain the target's products take A in (what the GEMM's accumulators
/// carry B's zero point times).
pub(crate) fn emit_row_sums<'ctx>(
    k: &Kernel<'_, 'ctx>,
    a: PointerValue<'ctx>,
    signed: bool,
    (rows, len): (IntValue<'ctx>, usize),
    sums: PointerValue<'ctx>,
) -> Result<(), CodegenError> {
    let dot = DotKind::for_target(k.cx.target);
    let em = &k.em;
    let context = k.cx.context;
    let (i8t, i32t) = (context.i8_type(), context.i32_type());
    let lanes = k.cx.lanes();
    let flip = signed != dot.a_in_int8();
    let widen = |v: inkwell::values::VectorValue<'ctx>, ty| {
        if dot.a_in_int8() {
            em.builder.build_int_s_extend(v, ty, "wide")
        } else {
            em.builder.build_int_z_extend(v, ty, "wide")
        }
    };
    let total = k.slot(i32t.vec_type(lanes).into())?;
    em.counted_loop(em.i64(0), rows, |r| {
        em.builder
            .build_store(total, i32t.vec_type(lanes).const_zero())?;
        let row = em.builder.build_int_mul(r, em.i64(len), "row")?;
        k.row(len, lanes, &mut |pos, width| {
            let at = byte_offset(em, a, em.builder.build_int_add(row, pos, "at")?)?;
            let mut bytes = super::gemm8::load_unaligned(em, i8t.vec_type(width), at)?;
            if flip {
                let mask =
                    VectorType::const_vector(&vec![i8t.const_int(0x80, false); width as usize]);
                bytes = em.builder.build_xor(bytes, mask, "dom")?;
            }
            let mut wide = widen(bytes, i32t.vec_type(width))?;
            if width != lanes {
                // One value: into lane 0 of a zero vector.
                let one = em
                    .builder
                    .build_extract_element(wide, i32t.const_zero(), "one")?;
                wide = em.builder.build_insert_element(
                    i32t.vec_type(lanes).const_zero(),
                    one,
                    i32t.const_zero(),
                    "lane0",
                )?;
            }
            let old = em
                .builder
                .build_load(i32t.vec_type(lanes), total, "t")?
                .into_vector_value();
            em.builder
                .build_store(total, em.builder.build_int_add(old, wide, "t")?)?;
            Ok(())
        })?;
        let vector = em
            .builder
            .build_load(i32t.vec_type(lanes), total, "t")?
            .into_vector_value();
        let reduced = em.call_value(
            "llvm.vector.reduce.add",
            &[vector.get_type().into()],
            &[vector.into()],
        )?;
        let at = byte_offset(em, sums, em.builder.build_int_mul(r, em.i64(4), "s")?)?;
        em.builder.build_store(at, reduced)?;
        Ok(())
    })
}

/// Quantises `rows × len` f32 values at `from` into int8/uint8 bytes at
/// `to` with the interpreter's `Quantize` arithmetic (`quantize`'s scale
/// and zero point), and writes each row's sum in the domain the target's
/// products take A in into `sums` (i32 each, as [`emit_row_sums`]).
pub(crate) fn emit_quantize_rows<'ctx>(
    k: &Kernel<'_, 'ctx>,
    from: PointerValue<'ctx>,
    to: PointerValue<'ctx>,
    (rows, len): (usize, usize),
    quantize: &PerTensor,
    sums: PointerValue<'ctx>,
) -> Result<(), CodegenError> {
    let em = &k.em;
    let context = k.cx.context;
    let lanes = k.cx.lanes();
    let f32v = context.f32_type().vec_type(lanes);
    let i32v = context.i32_type().vec_type(lanes);
    let shift = DotKind::for_target(k.cx.target).a_shift(quantize.signed);
    let shift = VectorType::const_vector(&vec![
        context.i32_type().const_int(shift as u64, true);
        lanes as usize
    ]);
    let total = k.slot(i32v.into())?;
    let scale = em.splat(
        context.f32_type().const_float(f64::from(quantize.scale)),
        f32v,
    )?;
    let zero = em.splat(
        context
            .f32_type()
            .const_float(f64::from(quantize.zero_point)),
        f32v,
    )?;
    let bounds = if quantize.signed {
        (-128.0, 127.0)
    } else {
        (0.0, 255.0)
    };
    let tail = len % lanes as usize;
    em.counted_loop(em.i64(0), em.i64(rows), |r| {
        em.builder.build_store(total, i32v.const_zero())?;
        let row = em.builder.build_int_mul(r, em.i64(len), "row")?;
        k.row_masked(len, lanes, &mut |pos, _, mask| {
            let at = em.builder.build_int_add(row, pos, "at")?;
            let value = k.load_f32(em.float_offset(from, at)?, lanes, mask)?;
            let q = quantize_with_zero_point(em, value, scale, zero, bounds)?;
            let bytes = em
                .builder
                .build_int_truncate(q, context.i8_type().vec_type(lanes), "q")?;
            let valid = if mask.is_some() { tail } else { lanes as usize };
            store_masked(em, byte_offset(em, to, at)?, bytes, valid)?;
            // The row sum, in the products' domain, of the lanes stored.
            let mut domain = em.builder.build_int_add(q, shift, "dom")?;
            if let Some(mask) = mask {
                domain = em
                    .builder
                    .build_select(mask, domain, i32v.const_zero(), "dom")?
                    .into_vector_value();
            }
            let old = em.builder.build_load(i32v, total, "t")?.into_vector_value();
            em.builder
                .build_store(total, em.builder.build_int_add(old, domain, "t")?)?;
            Ok(())
        })?;
        let vector = em.builder.build_load(i32v, total, "t")?.into_vector_value();
        let reduced = em.call_value(
            "llvm.vector.reduce.add",
            &[vector.get_type().into()],
            &[vector.into()],
        )?;
        let at = byte_offset(em, sums, em.builder.build_int_mul(r, em.i64(4), "s")?)?;
        em.builder.build_store(at, reduced)?;
        Ok(())
    })
}
