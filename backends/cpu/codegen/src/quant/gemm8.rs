//! The int8 GEMM `out[m×n] = epilogue(Σ_k (a − za)·(b − zb))` with A uint8
//! or int8 (read in place) and constant B packed at compile time.
//!
//! The dot products are u8 × s8 (see [`DotKind`]): an int8 A is shifted to
//! uint8 by flipping its sign bit (`a + 128`), B is stored centred
//! (`b − zb`, which must fit int8, or negated with its column when only
//! that fits: [`column_signs`]), and the constant `(za + 128·signed) ·
//! Σ_k (b − zb)` per column is subtracted from the i32 accumulator, so the
//! i32 sum is exact whatever the signedness and zero points (plus an i32
//! bias per column, a convolution's, when given). The epilogue
//! stores it as i32, or as f32 `sum · multiplier (+ bias)`, or quantises
//! that value again (`Quantize` semantics: divide by the scale, round half
//! to even, add the zero point, saturate) into int8/uint8.
//!
//! Packed B, per panel of `NR = vectors·lanes` columns: for each group of
//! `g` consecutive k (`DotKind::group`), for each column, its `g` values
//! (k past K are zero), bytes or, for `vpmaddwd`, i16 words
//! (`DotKind::b_bytes`). The micro-tile keeps `MR × vectors` i32
//! accumulators (the f32 GEMM's tile, [`GemmPlan`]) over all of K; one
//! broadcast of A's `g` values of a row feeds `vectors` dot instructions.
//! For `vpmaddwd` a tile's rows of A are first copied into the thread's
//! scratch as zero-extended (sign-flipped) words, so each broadcast is a
//! plain load instead of four shuffling instructions per row and pair of
//! k. The kernel's iterations are the B panels, taken in chunks that fit
//! half the L2 together: each tile of A (packed once) meets every panel
//! of its chunk.

use inkwell::types::VectorType;
use inkwell::values::{FunctionValue, IntValue, PointerValue, VectorValue};
use inkwell::AddressSpace;

use super::epilogue::Epilogue;
use super::DotKind;
use crate::gemm::GemmPlan;
use crate::ir::{define_function, Emitter};
use crate::kernels::{Cx, Kernel};
use crate::{CodegenError, Isa, Target};
use m4c_ir::DType;

/// Per-column tables after the packed B: column sums, multipliers, f32
/// bias, signs, i32 bias (4 bytes per entry each).
const TABLES: usize = 5;

/// The constants after the tables, 4 bytes each in this order, so that
/// the code of GEMMs that differ only in them is the same
/// ([`Int8GemmSpec::code_key`]).
#[derive(Clone, Copy)]
pub(super) enum Constant {
    /// A's zero point plus its shift into the products' domain (i32).
    Shift,
    /// The quantised output's scale (f32; 0 for other outputs).
    OutScale,
    /// The quantised output's zero point (f32; 0 for other outputs).
    OutZeroPoint,
    /// B's zero point in the products' domain (i32), the factor of A's
    /// run-time row sums ([`Int8Runtime::row_sums`]); 0 for a constant B,
    /// which is stored centred.
    BZeroPoint,
}

/// How many [`Constant`]s there are.
pub(super) const CONSTANTS: usize = 4;

/// What one int8 GEMM computes.
#[derive(Clone, Debug, PartialEq)]
pub struct Int8GemmSpec {
    /// The exported kernel symbol.
    pub symbol: String,
    /// Rows of A and of the output.
    pub m: usize,
    /// The reduction length.
    pub k: usize,
    /// Columns of B and of the output.
    pub n: usize,
    /// A holds int8 values (else uint8).
    pub a_signed: bool,
    /// A's zero point (one per tensor, as ONNX activations have).
    pub a_zero_point: i32,
    /// What the epilogue writes.
    pub output: Int8Output,
    /// Operands known only at run time (dynamic quantisation), read from
    /// the buffers after the output.
    pub runtime: Int8Runtime,
}

/// The run-time operands of an int8 GEMM: DynamicQuantizeLinear computes
/// an activation's zero point and scale while the model runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Int8Runtime {
    /// A's zero point is a one-element tensor of this type (int8, uint8 or
    /// int32) in the next buffer, replacing `a_zero_point`.
    pub zero_point: Option<DType>,
    /// A run-time f32 factor of this many elements (1, or one per column)
    /// in the next buffer multiplies the constant multipliers.
    pub multiplier: Option<usize>,
    /// A's row sums in the products' domain (one i32 per row) are in the
    /// next buffer: B is known only at run time too (attention's
    /// products), stored uncentred, so the sums carry `BZeroPoint · Σ_k a`
    /// per row in excess, which the epilogue subtracts.
    pub row_sums: bool,
}

impl Int8Runtime {
    /// Buffers the kernel reads besides `[A, packed, out]`.
    pub fn buffers(&self) -> usize {
        usize::from(self.zero_point.is_some())
            + usize::from(self.multiplier.is_some())
            + usize::from(self.row_sums)
    }
}

/// The element type and arithmetic of the GEMM's epilogue.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Int8Output {
    /// The exact i32 sums (MatMulInteger, the i32 MatMul of the IR).
    I32,
    /// f32 `sum · multiplier[n] (+ bias[n])`: a dequantised output.
    F32,
    /// `Quantize(sum · multiplier[n] (+ bias[n]), scale, zero_point)` into
    /// int8 (`signed`) or uint8.
    Quantized {
        signed: bool,
        scale: f32,
        zero_point: i32,
    },
}

impl Int8Output {
    pub(super) fn bytes(self) -> usize {
        match self {
            Int8Output::I32 | Int8Output::F32 => 4,
            Int8Output::Quantized { .. } => 1,
        }
    }
}

/// The constant operands of an int8 GEMM.
#[derive(Clone, Copy, Debug)]
pub struct Int8Weights<'a> {
    /// B, `k × n` row-major: int8 or uint8 values.
    pub b: &'a [i32],
    /// B's zero points: one, or one per column.
    pub b_zero_points: &'a [i32],
    /// Per-column multipliers of the sum (one, or one per column); unused
    /// for i32 outputs.
    pub multipliers: &'a [f32],
    /// Per-column bias added after the multiplier; not for i32 outputs.
    pub bias: Option<&'a [f32]>,
    /// Per-column i32 bias added to the integer sums (before any
    /// multiplier: an integer convolution's bias).
    pub int_bias: Option<&'a [i32]>,
}

/// The blocking of one int8 GEMM on its target.
#[derive(Clone, Copy, Debug)]
pub(super) struct Layout {
    dot: DotKind,
    /// i32 lanes per vector.
    pub(super) lanes: usize,
    vectors: usize,
    /// Rows of the micro-tile.
    rows: usize,
    /// k groups (`ceil(K / g)`).
    groups: usize,
    panels: usize,
    /// A's bytes have their sign bit flipped into the products' domain
    /// (an int8 A for `vpdpbusd`/`vpmaddwd`, a uint8 A for `sdot`).
    flip: bool,
}

impl Layout {
    pub(super) fn new(target: &Target, spec: &Int8GemmSpec) -> Self {
        let plan = GemmPlan::for_target(target);
        let dot = DotKind::for_target(target);
        Self {
            dot,
            lanes: plan.lanes,
            vectors: plan.vectors,
            rows: plan.tile_rows,
            groups: spec.k.div_ceil(dot.group()),
            panels: spec.n.div_ceil(plan.tile_cols()),
            flip: spec.a_signed != dot.a_in_int8(),
        }
    }

    pub(super) fn nr(&self) -> usize {
        self.vectors * self.lanes
    }

    /// Bytes of one group of k of a packed panel.
    pub(super) fn group_bytes(&self) -> usize {
        self.nr() * self.dot.group() * self.dot.b_bytes()
    }

    /// Bytes of one packed panel.
    pub(super) fn panel_bytes(&self) -> usize {
        self.groups * self.group_bytes()
    }

    /// Where the per-column tables start in the packed operand.
    pub(super) fn table_offset(&self) -> usize {
        (self.panels * self.panel_bytes()).next_multiple_of(64)
    }

    /// Entries of each per-column table (columns padded to whole panels).
    pub(super) fn table_len(&self) -> usize {
        self.panels * self.nr()
    }

    /// Where constant `c` lies, in bytes from the start of the tables.
    pub(super) fn constant_offset(&self, c: Constant) -> usize {
        4 * (TABLES * self.table_len() + c as usize)
    }

    /// Bytes of the whole packed operand: panels, tables, constants.
    pub(super) fn packed_bytes(&self) -> usize {
        self.table_offset() + 4 * (TABLES * self.table_len() + CONSTANTS)
    }

    /// Whether a tile's rows of A are copied into the scratch before the
    /// tile is computed, and each row's length there in k (K rounded up to
    /// whole groups, the padding zero): as words for `vpmaddwd`, and as
    /// bytes already in the products' domain where A's sign bit is
    /// flipped. The copy is made once per tile and read by every panel of
    /// a chunk; flipping per broadcast instead cost two vector
    /// instructions (`vpxor`, a register `vpbroadcastd`) per row and
    /// group beside the two dot products, ~14 % of `vpdpbusd`'s rate.
    fn packed_a(&self) -> Option<usize> {
        let copy = match self.dot {
            DotKind::Pmaddwd => true,
            DotKind::Vnni | DotKind::Sdot => self.flip,
            DotKind::Generic => false,
        };
        copy.then_some(self.groups * self.dot.group())
    }

    /// Bytes of one element of A in the copy ([`Layout::packed_a`]).
    fn a_bytes(&self) -> usize {
        if self.dot == DotKind::Pmaddwd {
            2
        } else {
            1
        }
    }
}

impl Int8GemmSpec {
    fn check(&self) -> Result<(), CodegenError> {
        if self.m == 0 || self.k == 0 || self.n == 0 {
            return Err(CodegenError::EmptyGemm {
                m: self.m,
                k: self.k,
                n: self.n,
            });
        }
        Ok(())
    }

    /// The packed constant operand the kernel reads (its second buffer):
    /// B in the target's layout, then the per-column sums of the stored
    /// B (i32; times A's shifted zero point they are the correction),
    /// multiplier and bias (f32), sign and integer bias (i32) tables.
    pub fn pack(&self, target: &Target, w: &Int8Weights<'_>) -> Result<Vec<u8>, CodegenError> {
        self.check()?;
        let (k, n) = (self.k, self.n);
        let per_column = |what: &str, len: usize| -> Result<(), CodegenError> {
            if len == 1 || len == n {
                Ok(())
            } else {
                Err(CodegenError::Unsupported(format!(
                    "int8 GEMM with {len} {what} for {n} columns (need 1 or {n})"
                )))
            }
        };
        if w.b.len() != k * n {
            return Err(CodegenError::Unsupported(format!(
                "int8 GEMM B of {} elements, expected {k}×{n}",
                w.b.len()
            )));
        }
        per_column("zero points", w.b_zero_points.len())?;
        per_column("multipliers", w.multipliers.len())?;
        if let Some(bias) = w.bias {
            if bias.len() != n || self.output == Int8Output::I32 {
                return Err(CodegenError::Unsupported(format!(
                    "int8 GEMM bias of {} elements for {n} columns and {:?} output",
                    bias.len(),
                    self.output
                )));
            }
        }
        let at = |v: &[i32], j: usize| v[if v.len() == 1 { 0 } else { j }];
        let layout = Layout::new(target, self);
        let (g, nr) = (layout.dot.group(), layout.nr());
        let centred: Vec<i32> = (0..k * n)
            .map(|i| w.b[i] - at(w.b_zero_points, i % n))
            .collect();
        let signs = column_signs(&centred, n).map_err(|(kk, j)| {
            CodegenError::Unsupported(format!(
                "int8 GEMM weight {} minus its zero point {} at ({kk}, {j}) fits int8 neither as \
                 it is nor negated with the rest of its column",
                w.b[kk * n + j],
                at(w.b_zero_points, j)
            ))
        })?;
        if w.int_bias.is_some_and(|b| b.len() != n) {
            return Err(CodegenError::Unsupported(format!(
                "int8 GEMM i32 bias for {n} columns of another length"
            )));
        }
        let tables = layout.table_offset();
        let mut bytes = vec![0u8; layout.packed_bytes()];
        let shift = self.a_zero_point + layout.dot.a_shift(self.a_signed) as i32;
        let (scale, zero_point) = match self.output {
            Int8Output::Quantized {
                scale, zero_point, ..
            } => (scale, zero_point as f32),
            Int8Output::I32 | Int8Output::F32 => (0.0, 0.0),
        };
        for (c, value) in [
            (Constant::Shift, shift.to_le_bytes()),
            (Constant::OutScale, scale.to_le_bytes()),
            (Constant::OutZeroPoint, zero_point.to_le_bytes()),
        ] {
            let at = tables + layout.constant_offset(c);
            bytes[at..at + 4].copy_from_slice(&value);
        }
        let mut column_sums = vec![0i64; n];
        let width = layout.dot.b_bytes();
        for kk in 0..k {
            for (j, column_sum) in column_sums.iter_mut().enumerate() {
                let stored = centred[kk * n + j] * signs[j];
                *column_sum += i64::from(stored);
                let (panel, col) = (j / nr, j % nr);
                let element = ((kk / g) * nr + col) * g + kk % g;
                let at = panel * layout.panel_bytes() + element * width;
                // An i8, or an i16 for `vpmaddwd` (little-endian).
                bytes[at..at + width].copy_from_slice(&(stored as i16).to_le_bytes()[..width]);
            }
        }
        let len = layout.table_len();
        for j in 0..n {
            // Wrapping like the i32 accumulator: the correction is exact
            // modulo 2³², as the interpreter's i32 sum is.
            let column_sum = column_sums[j] as i32;
            let multiplier = w.multipliers[if w.multipliers.len() == 1 { 0 } else { j }];
            let bias = w.bias.map_or(0.0, |b| b[j]);
            let int_bias = w.int_bias.map_or(0, |b| b[j]);
            for (table, value) in [
                (0, column_sum.to_le_bytes()),
                (1, multiplier.to_le_bytes()),
                (2, bias.to_le_bytes()),
                (3, signs[j].to_le_bytes()),
                (4, int_bias.to_le_bytes()),
            ] {
                let at = tables + (table * len + j) * 4;
                bytes[at..at + 4].copy_from_slice(&value);
            }
        }
        Ok(bytes)
    }

    /// What the kernel's code depends on: the spec without its symbol and
    /// without the constants `pack` stores (A's zero point, the output's
    /// scale and zero point). GEMMs with equal keys share one kernel.
    pub fn code_key(&self) -> String {
        let output = match self.output {
            Int8Output::Quantized { signed, .. } => Int8Output::Quantized {
                signed,
                scale: 0.0,
                zero_point: 0,
            },
            other => other,
        };
        let spec = Int8GemmSpec {
            symbol: String::new(),
            a_zero_point: 0,
            output,
            ..self.clone()
        };
        format!("{spec:?}")
    }

    /// Iterations of the kernel (B panels), which the executor splits over
    /// threads.
    pub fn extent(&self, target: &Target) -> usize {
        Layout::new(target, self).panels
    }

    /// Scratch bytes per thread: one tile's rows of A as words, where the
    /// target's products take them so (`vpmaddwd`).
    pub fn scratch_bytes(&self, target: &Target) -> usize {
        let layout = Layout::new(target, self);
        layout
            .packed_a()
            .map_or(0, |k| layout.rows * k * layout.a_bytes())
    }
}

/// Per column of the centred B (`k × n`): 1 when its values fit int8, −1
/// when only their negation does (uint8 weights with zero point 127 range
/// over −127..=128): the column is stored negated and its sum negated
/// back in the epilogue. The first `(k, column)` that fits neither way is
/// the error.
pub(crate) fn column_signs(centred: &[i32], n: usize) -> Result<Vec<i32>, (usize, usize)> {
    let mut signs = vec![1; n];
    for (j, sign) in signs.iter_mut().enumerate() {
        let column = centred.iter().skip(j).step_by(n);
        let (lo, hi) = column.fold((0, 0), |(lo, hi), &v| (v.min(lo), v.max(hi)));
        if hi > 127 || lo < -128 {
            *sign = -1;
            if hi > 128 || lo < -127 {
                let bad = centred
                    .iter()
                    .skip(j)
                    .step_by(n)
                    .position(|&v| !(-127..=128).contains(&v))
                    .unwrap_or(0);
                return Err((bad, j));
            }
        }
    }
    Ok(signs)
}

/// The micro-tile functions for one kind of panel (full, or the N tail).
struct Tiles<'ctx> {
    full: FunctionValue<'ctx>,
    last: Option<FunctionValue<'ctx>>,
}

/// Emits the kernel `spec.symbol` with buffers `[A, packed, out]` and
/// iterations over B panels.
pub(crate) fn emit<'ctx>(cx: Cx<'_, 'ctx>, spec: &Int8GemmSpec) -> Result<(), CodegenError> {
    spec.check()?;
    let layout = Layout::new(cx.target, spec);
    let nr = layout.nr();
    let tiles_for = |cols: usize| -> Result<Tiles<'ctx>, CodegenError> {
        let tile = |rows| emit_tile(cx, spec, &layout, rows, cols);
        Ok(Tiles {
            full: tile(layout.rows)?,
            last: match spec.m % layout.rows {
                0 => None,
                rows => Some(tile(rows)?),
            },
        })
    };
    let full = tiles_for(nr)?;
    let tail = match spec.n % nr {
        0 => None,
        cols => Some(tiles_for(cols)?),
    };
    let pack_a = match layout.packed_a() {
        Some(row) => Some(emit_pack_a(cx, spec, &layout, row)?),
        None => None,
    };
    let k = Kernel::define(cx, &spec.symbol, 3 + spec.runtime.buffers())?;
    let em = &k.em;
    let (a, packed, out) = (k.buffers[0], k.buffers[1], k.buffers[2]);
    let table = byte_offset(em, packed, em.i64(layout.table_offset()))?;
    let i32t = cx.context.i32_type();
    // A's zero point plus the shift of A into the products' domain: the
    // factor of the column sums that the accumulators carry in excess.
    let a_shift = layout.dot.a_shift(spec.a_signed);
    let offset = i32t.const_int(a_shift as u64, true);
    let mut next = 3;
    let shift = match spec.runtime.zero_point {
        None => {
            let at = layout.constant_offset(Constant::Shift);
            em.builder
                .build_load(i32t, byte_offset(em, table, em.i64(at))?, "shift")?
                .into_int_value()
        }
        Some(dtype) => {
            let at = k.buffers[next];
            next += 1;
            let zp = match dtype {
                DType::I32 => em.builder.build_load(i32t, at, "zp")?.into_int_value(),
                DType::I8 | DType::U8 => {
                    let byte = em
                        .builder
                        .build_load(cx.context.i8_type(), at, "zp")?
                        .into_int_value();
                    em.builder
                        .build_int_cast_sign_flag(byte, i32t, dtype == DType::I8, "zp")?
                }
                other => {
                    return Err(CodegenError::Unsupported(format!(
                        "an int8 GEMM zero point of type {other}"
                    )))
                }
            };
            em.builder.build_int_add(zp, offset, "shift")?
        }
    };
    let null = cx.context.ptr_type(AddressSpace::default()).const_null();
    let runtime_multiplier = match spec.runtime.multiplier {
        Some(_) => {
            next += 1;
            k.buffers[next - 1]
        }
        None => null,
    };
    let row_sums = if spec.runtime.row_sums {
        k.buffers[next]
    } else {
        null
    };
    let end = em.umin(k.end, em.i64(layout.panels))?;
    // Panels in chunks that stay in L2 together: each tile of A (packed
    // once, where packed) is used against every panel of the chunk.
    let chunk = (cx.target.l2_bytes / 2 / layout.panel_bytes()).max(1);
    em.chunked_loop(k.begin, end, chunk, |first, last| {
        let tile = |(full, tail): (FunctionValue<'ctx>, Option<FunctionValue<'ctx>>),
                    t: IntValue<'ctx>,
                    rows: usize|
         -> Result<(), CodegenError> {
            let row = em.builder.build_int_mul(t, em.i64(layout.rows), "row")?;
            let mut a_tile = byte_offset(
                em,
                a,
                em.builder.build_int_mul(row, em.i64(spec.k), "a_tile")?,
            )?;
            if let Some(pack_a) = pack_a {
                em.builder.build_call(
                    pack_a,
                    &[a_tile.into(), k.scratch.into(), em.i64(rows).into()],
                    "",
                )?;
                a_tile = k.scratch;
            }
            em.counted_loop(first, last, |panel| {
                let b_panel = byte_offset(
                    em,
                    packed,
                    em.builder
                        .build_int_mul(panel, em.i64(layout.panel_bytes()), "b_panel")?,
                )?;
                let col = em.builder.build_int_mul(panel, em.i64(nr), "col")?;
                let out_at = em.mul_add(row, em.i64(spec.n), col)?;
                let out_tile = byte_offset(
                    em,
                    out,
                    em.builder
                        .build_int_mul(out_at, em.i64(spec.output.bytes()), "out_tile")?,
                )?;
                let row_sums_tile = if spec.runtime.row_sums {
                    byte_offset(
                        em,
                        row_sums,
                        em.builder.build_int_mul(row, em.i64(4), "rs")?,
                    )?
                } else {
                    null
                };
                let args = [
                    a_tile.into(),
                    b_panel.into(),
                    out_tile.into(),
                    table.into(),
                    col.into(),
                    shift.into(),
                    runtime_multiplier.into(),
                    row_sums_tile.into(),
                ];
                let Some(tail) = tail else {
                    em.builder.build_call(full, &args, "")?;
                    return Ok(());
                };
                // The last panel holds the N tail.
                let is_tail = em.builder.build_int_compare(
                    inkwell::IntPredicate::EQ,
                    panel,
                    em.i64(spec.n / nr),
                    "is_tail",
                )?;
                let (tail_block, full_block, join) = (
                    cx.context.append_basic_block(em.function, "tail_panel"),
                    cx.context.append_basic_block(em.function, "full_panel"),
                    cx.context.append_basic_block(em.function, "panel_done"),
                );
                em.builder
                    .build_conditional_branch(is_tail, tail_block, full_block)?;
                for (block, f) in [(tail_block, tail), (full_block, full)] {
                    em.builder.position_at_end(block);
                    em.builder.build_call(f, &args, "")?;
                    em.builder.build_unconditional_branch(join)?;
                }
                em.builder.position_at_end(join);
                Ok(())
            })
        };
        let full_tiles = spec.m / layout.rows;
        let pick = |rows: fn(&Tiles<'ctx>) -> Option<FunctionValue<'ctx>>| {
            rows(&full).map(|f| (f, tail.as_ref().and_then(rows)))
        };
        if let Some(fs) = pick(|t| Some(t.full)) {
            em.counted_loop(em.i64(0), em.i64(full_tiles), |t| tile(fs, t, layout.rows))?;
        }
        if let Some(fs) = pick(|t| t.last) {
            tile(fs, em.i64(full_tiles), spec.m % layout.rows)?;
        }
        Ok(())
    })?;
    k.finish()
}

/// `ptr + bytes`.
pub(super) fn byte_offset<'ctx>(
    em: &Emitter<'_, 'ctx>,
    ptr: PointerValue<'ctx>,
    bytes: IntValue<'ctx>,
) -> Result<PointerValue<'ctx>, CodegenError> {
    // SAFETY: builds a GEP only; the kernels keep every offset inside the
    // static sizes of their buffers (checked by their tests).
    Ok(unsafe {
        em.builder
            .build_in_bounds_gep(em.context.i8_type(), ptr, &[bytes], "at")?
    })
}

/// Emits `void pack_a(ptr a, ptr out, i64 rows)`: `rows` rows of A (K
/// bytes each) in the products' domain (sign bit flipped where
/// `layout.flip`), `row` elements per row (zeros past K), as i16 words
/// for `vpmaddwd` or as bytes: the tile then broadcasts a group of k per
/// row straight from memory. A vector of bytes at a time, the row's last
/// bytes one by one.
fn emit_pack_a<'ctx>(
    cx: Cx<'_, 'ctx>,
    spec: &Int8GemmSpec,
    layout: &Layout,
    row: usize,
) -> Result<FunctionValue<'ctx>, CodegenError> {
    let context = cx.context;
    let ptr = context.ptr_type(AddressSpace::default());
    let ty = context
        .void_type()
        .fn_type(&[ptr.into(), ptr.into(), context.i64_type().into()], false);
    let name = format!("{}.pack_a", spec.symbol);
    let em = define_function(context, cx.module, cx.target, &name, ty, false);
    let (a, out, rows) = (em.ptr_param(0), em.ptr_param(1), em.int_param(2));
    let i8t = context.i8_type();
    let width = layout.a_bytes();
    let element = crate::kernels::int_type(context, width as u32);
    // `len` elements of row r from k on: bytes, flipped, widened.
    let copy = |r: IntValue<'ctx>, kk: IntValue<'ctx>, len: u32| -> Result<(), CodegenError> {
        let at = byte_offset(&em, a, em.mul_add(r, em.i64(spec.k), kk)?)?;
        let mut bytes = load_unaligned(&em, i8t.vec_type(len), at)?;
        if layout.flip {
            let flip = VectorType::const_vector(&vec![i8t.const_int(0x80, false); len as usize]);
            bytes = em.builder.build_xor(bytes, flip, "a_dom")?;
        }
        let value = if width == 2 {
            em.builder
                .build_int_z_extend(bytes, element.vec_type(len), "a16")?
        } else {
            bytes
        };
        let index = em.mul_add(r, em.i64(row), kk)?;
        let to = em.builder.build_int_mul(index, em.i64(width), "at")?;
        em.builder
            .build_store(byte_offset(&em, out, to)?, value)?
            .set_alignment(1)
            .map_err(|e| CodegenError::Llvm(e.to_string()))?;
        Ok(())
    };
    let vector = (layout.lanes * 4) as u32;
    let whole = spec.k / vector as usize;
    em.counted_loop(em.i64(0), rows, |r| {
        if whole > 0 {
            em.counted_loop(em.i64(0), em.i64(whole), |v| {
                let kk = em.builder.build_int_mul(v, em.i64(vector as usize), "k")?;
                copy(r, kk, vector)
            })?;
        }
        for kk in whole * vector as usize..spec.k {
            copy(r, em.i64(kk), 1)?;
        }
        for kk in spec.k..row {
            let index = em.mul_add(r, em.i64(row), em.i64(kk))?;
            let to = em.builder.build_int_mul(index, em.i64(width), "at")?;
            em.builder
                .build_store(byte_offset(&em, out, to)?, element.const_zero())?;
        }
        Ok(())
    })?;
    em.builder.build_return(None)?;
    Ok(em.function)
}

/// Emits `void tile(ptr a, ptr b_panel, ptr out, ptr tables, i64 col,
/// i32 shift, ptr runtime_multiplier, ptr row_sums)`: `rows` rows ×
/// `cols` columns of the output, over all of K.
fn emit_tile<'ctx>(
    cx: Cx<'_, 'ctx>,
    spec: &Int8GemmSpec,
    layout: &Layout,
    rows: usize,
    cols: usize,
) -> Result<FunctionValue<'ctx>, CodegenError> {
    let context = cx.context;
    let ptr = context.ptr_type(AddressSpace::default());
    let i64t = context.i64_type();
    let ty = context.void_type().fn_type(
        &[
            ptr.into(),
            ptr.into(),
            ptr.into(),
            ptr.into(),
            i64t.into(),
            context.i32_type().into(),
            ptr.into(),
            ptr.into(),
        ],
        false,
    );
    let name = format!("{}.tile_{rows}x{cols}", spec.symbol);
    let em = define_function(context, cx.module, cx.target, &name, ty, false);
    let (a, b, out, tables) = (
        em.ptr_param(0),
        em.ptr_param(1),
        em.ptr_param(2),
        em.ptr_param(3),
    );
    let col = em.int_param(4);
    let (shift, runtime_multiplier, row_sums) = (em.int_param(5), em.ptr_param(6), em.ptr_param(7));
    let dot = Dot {
        em: &em,
        isa: cx.target.isa,
        layout: *layout,
        a_row: layout
            .packed_a()
            .map_or(spec.k, |row| row * layout.a_bytes()),
        signed: spec.a_signed,
    };
    let acc_type = context.i32_type().vec_type(layout.lanes as u32);
    let g = layout.dot.group();
    let full_groups = spec.k / g;
    let mut accs = vec![acc_type.const_zero(); rows * layout.vectors];
    if full_groups > 0 {
        let entry = em.current_block();
        let body = context.append_basic_block(em.function, "k_loop");
        let done = context.append_basic_block(em.function, "k_done");
        em.builder.build_unconditional_branch(body)?;
        em.builder.position_at_end(body);
        let kg = em.builder.build_phi(i64t, "kg")?;
        kg.add_incoming(&[(&em.i64(0), entry)]);
        let phis = accs
            .iter()
            .map(|zero| {
                let phi = em.builder.build_phi(acc_type, "acc")?;
                phi.add_incoming(&[(zero, entry)]);
                Ok(phi)
            })
            .collect::<Result<Vec<_>, CodegenError>>()?;
        let current: Vec<_> = phis
            .iter()
            .map(|p| p.as_basic_value().into_vector_value())
            .collect();
        let group = kg.as_basic_value().into_int_value();
        let updated = dot.step(a, b, group, g, rows, &current)?;
        let next = em.builder.build_int_add(group, em.i64(1), "kg_next")?;
        let latch = em.current_block();
        kg.add_incoming(&[(&next, latch)]);
        for (phi, value) in phis.iter().zip(&updated) {
            phi.add_incoming(&[(value, latch)]);
        }
        let more = em.builder.build_int_compare(
            inkwell::IntPredicate::ULT,
            next,
            em.i64(full_groups),
            "more",
        )?;
        em.builder.build_conditional_branch(more, body, done)?;
        em.builder.position_at_end(done);
        accs = updated;
    }
    if !spec.k.is_multiple_of(g) {
        accs = dot.step(a, b, em.i64(full_groups), spec.k % g, rows, &accs)?;
    }
    let epilogue = Epilogue {
        em: &em,
        spec,
        layout: *layout,
        tables,
        col,
        shift,
        runtime_multiplier,
        row_sums,
    };
    for r in 0..rows {
        for v in 0..layout.vectors {
            let first = v * layout.lanes;
            if first >= cols {
                continue;
            }
            let valid = (cols - first).min(layout.lanes);
            epilogue.store(out, r, v, accs[r * layout.vectors + v], valid)?;
        }
    }
    em.builder.build_return(None)?;
    Ok(em.function)
}

/// Emits the dot products of one k group.
struct Dot<'e, 'a, 'ctx> {
    em: &'e Emitter<'a, 'ctx>,
    isa: Isa,
    layout: Layout,
    /// A's row stride in bytes: K, or the packed words' row.
    a_row: usize,
    signed: bool,
}

impl<'ctx> Dot<'_, '_, 'ctx> {
    /// Adds group `group` (its first `count` k, `count ≤ g`) of every row
    /// to the accumulators.
    fn step(
        &self,
        a: PointerValue<'ctx>,
        b: PointerValue<'ctx>,
        group: IntValue<'ctx>,
        count: usize,
        rows: usize,
        accs: &[VectorValue<'ctx>],
    ) -> Result<Vec<VectorValue<'ctx>>, CodegenError> {
        let em = self.em;
        let (g, lanes, vectors) = (
            self.layout.dot.group(),
            self.layout.lanes,
            self.layout.vectors,
        );
        let b_row = em
            .builder
            .build_int_mul(group, em.i64(self.layout.group_bytes()), "b_row")?;
        let b_vectors = (0..vectors)
            .map(|v| {
                let offset = v * lanes * g * self.layout.dot.b_bytes();
                let at = em.builder.build_int_add(b_row, em.i64(offset), "b_at")?;
                self.load_b(byte_offset(em, b, at)?)
            })
            .collect::<Result<Vec<_>, CodegenError>>()?;
        let a_bytes = if self.layout.packed_a().is_some() {
            self.layout.a_bytes()
        } else {
            1
        };
        let k_at = em
            .builder
            .build_int_mul(group, em.i64(g * a_bytes), "k_at")?;
        let mut out = Vec::with_capacity(accs.len());
        for r in 0..rows {
            let at = em
                .builder
                .build_int_add(k_at, em.i64(r * self.a_row), "a_at")?;
            let splat = self.a_splat(byte_offset(em, a, at)?, count)?;
            for (v, b_vector) in b_vectors.iter().enumerate() {
                out.push(self.dot(accs[r * vectors + v], splat, *b_vector)?);
            }
        }
        Ok(out)
    }

    /// One vector of packed B in the form the dot instruction takes.
    fn load_b(&self, at: PointerValue<'ctx>) -> Result<VectorValue<'ctx>, CodegenError> {
        let em = self.em;
        let (i8t, lanes) = (em.context.i8_type(), self.layout.lanes as u32);
        let size = (self.layout.dot.group() * self.layout.dot.b_bytes()) as u32;
        let bytes = load_unaligned(em, i8t.vec_type(lanes * size), at)?;
        Ok(match self.layout.dot {
            DotKind::Vnni | DotKind::Sdot => em
                .builder
                .build_bit_cast(bytes, em.context.i32_type().vec_type(lanes), "b")?
                .into_vector_value(),
            DotKind::Pmaddwd => em
                .builder
                .build_bit_cast(bytes, em.context.i16_type().vec_type(lanes * 2), "b")?
                .into_vector_value(),
            DotKind::Generic => {
                em.builder
                    .build_int_s_extend(bytes, em.context.i32_type().vec_type(lanes), "b")?
            }
        })
    }

    /// A's `count` k at `at` in the domain the products take them,
    /// broadcast to every lane: bytes, or `vpmaddwd`'s pair of packed words
    /// (zeros past K already there) loaded as one i32.
    fn a_splat(
        &self,
        at: PointerValue<'ctx>,
        count: usize,
    ) -> Result<VectorValue<'ctx>, CodegenError> {
        let em = self.em;
        let word = match self.layout.packed_a() {
            Some(_) => em
                .builder
                .build_load(em.context.i32_type(), at, "a_pair")?
                .into_int_value(),
            None => self.a_word(at, count)?,
        };
        splat_int(em, word, self.layout.lanes)
    }

    /// A's `count` bytes at `at` (zeros past them) shifted to uint8 (int8
    /// for `sdot`), as the i32 one lane of the broadcast holds (the generic
    /// kind's one byte zero-extended; `vpmaddwd` reads packed words
    /// instead).
    fn a_word(&self, at: PointerValue<'ctx>, count: usize) -> Result<IntValue<'ctx>, CodegenError> {
        let em = self.em;
        let (i8t, g) = (em.context.i8_type(), self.layout.dot.group() as u32);
        let ty = i8t.vec_type(g);
        let mut bytes = if count == g as usize {
            load_unaligned(em, ty, at)?
        } else {
            let mut v = ty.const_zero();
            for j in 0..count {
                let byte = em
                    .builder
                    .build_load(i8t, byte_offset(em, at, em.i64(j))?, "a")?;
                v = em.builder.build_insert_element(
                    v,
                    byte,
                    em.context.i32_type().const_int(j as u64, false),
                    "a",
                )?;
            }
            v
        };
        if self.signed != self.layout.dot.a_in_int8() {
            let flip = VectorType::const_vector(&vec![i8t.const_int(0x80, false); g as usize]);
            bytes = em.builder.build_xor(bytes, flip, "a_u8")?;
        }
        let word = match self.layout.dot {
            DotKind::Vnni | DotKind::Sdot | DotKind::Pmaddwd => bytes,
            DotKind::Generic => {
                em.builder
                    .build_int_z_extend(bytes, em.context.i32_type().vec_type(1), "a32")?
            }
        };
        Ok(em
            .builder
            .build_bit_cast(word, em.context.i32_type(), "a_word")?
            .into_int_value())
    }

    /// `acc + Σ a·b` over each lane's group.
    fn dot(
        &self,
        acc: VectorValue<'ctx>,
        a: VectorValue<'ctx>,
        b: VectorValue<'ctx>,
    ) -> Result<VectorValue<'ctx>, CodegenError> {
        let em = self.em;
        let call =
            |name: &str, args: &[VectorValue<'ctx>]| -> Result<VectorValue<'ctx>, CodegenError> {
                let args: Vec<_> = args.iter().map(|v| (*v).into()).collect();
                Ok(em.call_value(name, &[], &args)?.into_vector_value())
            };
        Ok(match self.layout.dot {
            DotKind::Vnni => {
                let name = match self.isa {
                    Isa::Avx512 => "llvm.x86.avx512.vpdpbusd.512",
                    _ => "llvm.x86.avx512.vpdpbusd.256",
                };
                call(name, &[acc, a, b])?
            }
            DotKind::Sdot => {
                let bytes = em.context.i8_type().vec_type(4 * a.get_type().get_size());
                let as_bytes = |v: VectorValue<'ctx>| -> Result<_, CodegenError> {
                    Ok(em.builder.build_bit_cast(v, bytes, "s8")?)
                };
                let args = [acc.into(), as_bytes(a)?.into(), as_bytes(b)?.into()];
                em.call_intrinsic(
                    "llvm.aarch64.neon.sdot",
                    &[acc.get_type().into(), bytes.into()],
                    &args,
                )?
                .ok_or_else(|| {
                    CodegenError::Llvm("llvm.aarch64.neon.sdot returned no value".into())
                })?
                .into_vector_value()
            }
            DotKind::Pmaddwd => {
                let a16 = em
                    .builder
                    .build_bit_cast(a, b.get_type(), "a16")?
                    .into_vector_value();
                let name = match self.isa {
                    Isa::Avx512 => "llvm.x86.avx512.pmaddw.d.512",
                    _ => "llvm.x86.avx2.pmadd.wd",
                };
                let products = call(name, &[a16, b])?;
                em.builder.build_int_add(acc, products, "acc")?
            }
            DotKind::Generic => {
                let products = em.builder.build_int_mul(a, b, "products")?;
                em.builder.build_int_add(acc, products, "acc")?
            }
        })
    }
}

/// Loads `ty` from `at` with byte alignment.
pub(super) fn load_unaligned<'ctx>(
    em: &Emitter<'_, 'ctx>,
    ty: VectorType<'ctx>,
    at: PointerValue<'ctx>,
) -> Result<VectorValue<'ctx>, CodegenError> {
    let load = em.builder.build_load(ty, at, "v")?;
    inkwell::values::BasicValue::as_instruction_value(&load)
        .ok_or_else(|| CodegenError::Llvm("a load built no instruction".into()))?
        .set_alignment(1)
        .map_err(|e| CodegenError::Llvm(e.to_string()))?;
    Ok(load.into_vector_value())
}

/// `lanes` copies of the integer `word`.
pub(super) fn splat_int<'ctx>(
    em: &Emitter<'_, 'ctx>,
    word: IntValue<'ctx>,
    lanes: usize,
) -> Result<VectorValue<'ctx>, CodegenError> {
    let ty = word.get_type().vec_type(lanes as u32);
    let zero = em.context.i32_type().const_zero();
    let one = em
        .builder
        .build_insert_element(ty.get_poison(), word, zero, "one")?;
    let mask = VectorType::const_vector(&vec![zero; lanes]);
    Ok(em
        .builder
        .build_shuffle_vector(one, ty.get_poison(), mask, "splat")?)
}
