//! Graph patterns the quantised kernels replace. The ONNX importer writes
//! dequantisation as plain ops (Cast → Sub zero point → Mul scale) and
//! integer products as an i32 MatMul; this module finds, in the graph the
//! backend compiles:
//!
//! * **int8 GEMM**: `MatMul(A, B)` (B possibly transposed) with A = `[Mul s_a](Sub?(Cast(x_q), za))`
//!   (x_q int8/uint8 at run time, za and s_a one constant each) and B =
//!   the same over a constant int8/uint8 tensor (scales and zero points
//!   per tensor or per output column), or an i32 constant whose values
//!   fit int8; then optionally `Cast f32 → Mul multiplier` (QLinearMatMul),
//!   `Add bias` and `Quantize(·, s_y, z_y)` into int8/uint8. One
//!   [`Int8GemmSpec`] kernel computes the last of these nodes
//!   (`pattern8.rs`).
//! * **int8 convolution**: the same around an ungrouped `Conv` with
//!   constant filters (per output channel parameters), its i32 or f32
//!   bias: im2col, the int8 GEMM and a transposing copy (`conv8.rs`).
//! * **int4 weight-only GEMM**: `MatMul(x, W, trans_b)` with W =
//!   `Slice?(Reshape(Mul(Sub?(Cast(q), zp), s)))` over a constant
//!   int4/uint4 (or 8-bit) `[n, blocks, block]` tensor
//!   (`com.microsoft.MatMulNBits`),
//!   or `MatMul(x, W)` with the same over `[blocks, block, n]` (blocked
//!   int4 QDQ), or a `Concat` of such along the columns (fused
//!   projections): one [`Int4GemmSpec`] kernel.
//!
//! The dequantisation nodes are computed by no kernel when every reader of
//! their results is such a kernel (a dequantised activation shared by the
//! Q, K and V projections included); the fusion groups are cut where they
//! were ([`split_groups`]).

use m4c_ir::{DType, Graph, Op, Tensor, ValueDef, ValueId};

use super::conv8::{emit_im2col8, ConvShape, Pad};
use super::{
    Int4A8Spec, Int4GemmSpec, Int4Weights, Int8GemmSpec, Int8Output, Int8Runtime, Int8Weights,
};
use crate::graph::{Loc, Lowering};
use crate::kernels::contiguous_strides;
use crate::kernels::movement::{AxisMap, IndexCopy};
use crate::CodegenError;

/// One pattern found: the node whose value the kernel writes, the nodes it
/// computes on the way (including that one), and what to generate.
#[derive(Clone, Debug)]
pub(crate) struct Matched {
    pub output: usize,
    pub core: Vec<usize>,
    pub kind: Kind,
}

/// The kernel a pattern becomes.
#[derive(Clone, Debug)]
pub(crate) enum Kind {
    Int8 {
        a: ValueId,
        m: usize,
        k: usize,
        n: usize,
        a_signed: bool,
        a_zero_point: i32,
        /// A's zero point when it is computed at run time.
        a_runtime_zero: Option<ValueId>,
        /// A run-time factor of the multipliers (1 or `n` elements).
        runtime_multiplier: Option<ValueId>,
        /// B centred (`b − zb`), `k × n`.
        b: Vec<i32>,
        multipliers: Vec<f32>,
        bias: Option<Vec<f32>>,
        /// i32 bias added to the sums (an integer convolution's).
        int_bias: Option<Vec<i32>>,
        /// A convolution computed as im2col + this GEMM.
        conv: Option<Box<ConvShape>>,
        output: Int8Output,
    },
    Int4 {
        x: ValueId,
        m: usize,
        k: usize,
        n: usize,
        block: usize,
        signed: bool,
        bits: u8,
        packed: Vec<u8>,
        scales: Vec<f32>,
        zero_points: Vec<f32>,
        /// x is quantised to int8 per block at run time (the kernel reads
        /// the f32 x before that): [`Int4A8Spec`].
        int8_compute: bool,
    },
    /// An attention chain with int8 products (`attention8.rs`), computed
    /// by the attention kernel.
    Attention8(Box<super::attention8::Int8Attention>),
}

/// The patterns of `g`: per node, the match whose kernel it is; and per
/// node, whether a quantised kernel computes it (so it gets no kernel of
/// its own), with the node whose kernel that is.
pub(crate) struct Patterns {
    pub at: Vec<Option<Matched>>,
    pub absorbed_by: Vec<Option<usize>>,
    /// Per match (by output node): the input-side nodes it reads through.
    reads: Vec<(usize, Vec<usize>)>,
}

/// Who produces and who reads each value.
pub(super) struct Uses<'g> {
    pub(super) g: &'g Graph,
    producer: Vec<Option<usize>>,
    consumers: Vec<Vec<usize>>,
}

impl<'g> Uses<'g> {
    fn new(g: &'g Graph) -> Self {
        let mut producer = vec![None; g.values.len()];
        let mut consumers = vec![Vec::new(); g.values.len()];
        for (i, node) in g.nodes.iter().enumerate() {
            producer[node.output.index()] = Some(i);
            for &input in &node.inputs {
                if !consumers[input.index()].contains(&i) {
                    consumers[input.index()].push(i);
                }
            }
        }
        Self {
            g,
            producer,
            consumers,
        }
    }

    /// The node computing `v` and its op.
    pub(super) fn def(&self, v: ValueId) -> Option<(usize, &'g Op, &'g [ValueId])> {
        let i = self.producer[v.index()]?;
        let node = &self.g.nodes[i];
        Some((i, &node.op, &node.inputs))
    }

    pub(super) fn constant(&self, v: ValueId) -> Option<&'g Tensor> {
        match &self.g.value(v).def {
            ValueDef::Const(t) => Some(t),
            _ => None,
        }
    }

    /// `v`'s only reader, when it has one and is no graph output.
    pub(super) fn sole_reader(&self, v: ValueId) -> Option<usize> {
        match self.consumers[v.index()].as_slice() {
            [user] if !self.g.outputs.contains(&v) => Some(*user),
            _ => None,
        }
    }

    pub(super) fn dtype(&self, v: ValueId) -> DType {
        self.g.value(v).ty.dtype
    }

    pub(super) fn shape(&self, v: ValueId) -> Option<Vec<usize>> {
        self.g.value(v).ty.static_shape()
    }
}

/// int8, uint8, int32 or int64: what a zero point may be.
fn is_integer(dtype: DType) -> bool {
    dtype.is_int() || dtype == DType::U8
}

/// A constant's elements as i32 (int8, uint8, int32).
pub(super) fn ints(t: &Tensor) -> Option<Vec<i32>> {
    Some(match t.dtype {
        DType::I8 => t.to_i8_vec().ok()?.into_iter().map(i32::from).collect(),
        DType::U8 => t.to_u8_vec().ok()?.into_iter().map(i32::from).collect(),
        DType::I32 => t.to_i32_vec().ok()?,
        _ => return None,
    })
}

/// A one-element integer constant.
pub(super) fn int_scalar(t: &Tensor) -> Option<i32> {
    match ints(t)?.as_slice() {
        [v] => Some(*v),
        _ => None,
    }
}

/// A one-element f32 constant.
pub(super) fn f32_scalar(t: &Tensor) -> Option<f32> {
    match t.to_f32_vec().ok()?.as_slice() {
        [v] => Some(*v),
        _ => None,
    }
}

/// The values of a parameter broadcast over a rank-`rank` tensor that
/// vary at most along `axis` (of length `len`): one value, or one per
/// index of that axis.
pub(super) fn along(
    values: Vec<f32>,
    shape: &[usize],
    rank: usize,
    len: usize,
    axis: usize,
) -> Option<Vec<f32>> {
    if values.len() == 1 {
        return Some(values);
    }
    if shape.len() > rank {
        return None;
    }
    let mut full = vec![1; rank - shape.len()];
    full.extend(shape);
    let fits = full
        .iter()
        .enumerate()
        .all(|(d, &s)| s == if d == axis { len } else { 1 });
    fits.then_some(values)
}

/// `Cast(q)` (to f32 or i32), optionally `− z`, optionally `· s`: the
/// dequantisation (or centring) of a quantised tensor.
pub(super) struct Dequant {
    pub(super) q: ValueId,
    /// Zero point: a constant (one value, or `(values, shape)`).
    pub(super) zero: Option<ValueId>,
    pub(super) scale: Option<ValueId>,
    pub(super) nodes: Vec<usize>,
}

impl Uses<'_> {
    pub(super) fn dequant(&self, v: ValueId) -> Option<Dequant> {
        let mut nodes = Vec::new();
        let mut cur = v;
        let mut scale = None;
        if let Some((i, Op::Mul, [x, s])) = self.def(cur) {
            let (x, s) = if self.constant(*s).is_some() {
                (*x, *s)
            } else {
                (*s, *x)
            };
            self.constant(s)?;
            nodes.push(i);
            scale = Some(s);
            cur = x;
        }
        let mut zero = None;
        if let Some((i, Op::Sub, [x, z])) = self.def(cur) {
            // The zero point: one value (a constant, or computed at run
            // time by DynamicQuantizeLinear), possibly behind its own Cast
            // from an integer type.
            let z = match self.def(*z) {
                Some((c, Op::Cast { .. }, [inner])) if is_integer(self.dtype(*inner)) => {
                    nodes.push(c);
                    *inner
                }
                _ => *z,
            };
            if self.constant(z).is_none()
                && (self.shape(z)?.iter().product::<usize>() != 1 || !is_integer(self.dtype(z)))
            {
                return None;
            }
            nodes.push(i);
            zero = Some(z);
            cur = *x;
        }
        let (i, Op::Cast { to }, [q]) = self.def(cur)? else {
            return None;
        };
        if !matches!(to, DType::F32 | DType::I32) {
            return None;
        }
        nodes.push(i);
        Some(Dequant {
            q: *q,
            zero,
            scale,
            nodes,
        })
    }
}

/// Finds every pattern of `g`.
pub(crate) fn find(g: &Graph) -> Patterns {
    let uses = Uses::new(g);
    let mut at: Vec<Option<Matched>> = vec![None; g.nodes.len()];
    let mut inputs: Vec<(usize, Vec<usize>)> = Vec::new();
    for (i, node) in g.nodes.iter().enumerate() {
        let found = match &node.op {
            Op::MatMul {
                trans_a: false,
                trans_b,
            } => super::pattern4::int4(&uses, i, *trans_b)
                .or_else(|| super::pattern8::int8(&uses, i, *trans_b)),
            Op::Conv(attrs) => super::pattern8::int8_conv(&uses, i, attrs),
            _ => None,
        };
        if let Some((matched, reads)) = found {
            let output = matched.output;
            inputs.push((output, reads));
            at[output] = Some(matched);
        }
    }
    settle(&uses, at, inputs)
}

impl Patterns {
    /// Adds the int8 form of each attention chain (`chains` keyed by
    /// output node, `members` the fusion groups' members by root) that has
    /// one; whether any was added (the fusion groups are then split
    /// again).
    pub(crate) fn add_attention8(
        &mut self,
        g: &Graph,
        chains: &[Option<crate::kernels::attention::Chain>],
        members: &[Vec<usize>],
    ) -> bool {
        let uses = Uses::new(g);
        let mut at = std::mem::take(&mut self.at);
        let mut inputs = std::mem::take(&mut self.reads);
        let mut added = false;
        for chain in chains.iter().flatten() {
            if at[chain.output].is_some() {
                continue;
            }
            if let Some((matched, reads)) = super::attention8::find(&uses, *chain, members) {
                let output = matched.output;
                inputs.push((output, reads));
                at[output] = Some(matched);
                added = true;
            }
        }
        *self = settle(&uses, at, inputs);
        added
    }
}

/// The patterns `at` with the input-side nodes each reads through
/// (`inputs`), less those that cannot read their operands where they run.
fn settle(
    uses: &Uses<'_>,
    mut at: Vec<Option<Matched>>,
    mut inputs: Vec<(usize, Vec<usize>)>,
) -> Patterns {
    // A kernel reads its run-time operands (the quantised activation,
    // run-time zero points and multipliers) directly, but the memory plan
    // keeps a value only until the last kernel of its graph readers: a
    // match none of whose operands' readers runs at or after its kernel
    // (the dequantised activation of a residual block, also read by the
    // skip connection's Add before the kernel) is given up, and absorption
    // is worked out again without it.
    loop {
        let absorbed_by = absorption(uses, &at, &inputs);
        let outlived = |m: &Matched| {
            kernel_reads(&m.kind).into_iter().any(|v| {
                uses.producer[v.index()].is_some()
                    && !uses.consumers[v.index()]
                        .iter()
                        .any(|&r| absorbed_by[r].map_or(r >= m.output, |k| k >= m.output))
            })
        };
        let dropped: Vec<usize> = at
            .iter()
            .flatten()
            .filter(|m| outlived(m))
            .map(|m| m.output)
            .collect();
        if dropped.is_empty() {
            return Patterns {
                at,
                absorbed_by,
                reads: inputs,
            };
        }
        for d in dropped {
            at[d] = None;
            inputs.retain(|(o, _)| *o != d);
        }
    }
}

/// The values a kernel reads itself (not through the graph's edges).
fn kernel_reads(kind: &Kind) -> Vec<ValueId> {
    match kind {
        Kind::Int8 {
            a,
            a_runtime_zero,
            runtime_multiplier,
            ..
        } => [Some(*a), *a_runtime_zero, *runtime_multiplier]
            .into_iter()
            .flatten()
            .collect(),
        Kind::Int4 { x, .. } => vec![*x],
        Kind::Attention8(attention) => attention.reads.clone(),
    }
}

/// The kernel computing each node: a match's core, or (for the
/// dequantisation nodes of its inputs, `inputs`) the last match reading
/// them; none for a node computed by its own kernel.
fn absorption(
    uses: &Uses<'_>,
    at: &[Option<Matched>],
    inputs: &[(usize, Vec<usize>)],
) -> Vec<Option<usize>> {
    let g = uses.g;
    let mut absorbed_by: Vec<Option<usize>> = vec![None; g.nodes.len()];
    for m in at.iter().flatten() {
        for &c in &m.core {
            absorbed_by[c] = Some(m.output);
        }
    }
    let core = absorbed_by.clone();
    for (output, reads) in inputs {
        for &node in reads {
            if core[node].is_none() && absorbed_by[node].is_none_or(|o| o < *output) {
                absorbed_by[node] = Some(*output);
            }
        }
    }
    // An input-side node is left to its own kernel when one of its
    // readers is, or when its result is a graph output.
    loop {
        let mut changed = false;
        for i in 0..g.nodes.len() {
            if absorbed_by[i].is_none() || core[i].is_some() {
                continue;
            }
            let out = g.nodes[i].output;
            if g.outputs.contains(&out)
                || uses.consumers[out.index()]
                    .iter()
                    .any(|&c| absorbed_by[c].is_none())
            {
                absorbed_by[i] = None;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    absorbed_by
}

/// The fusion groups of `roots` without the nodes a quantised kernel
/// computes: a node that joined the group of an absorbed consumer, or
/// whose result a quantised kernel reads (the run-time `Quantize` of an
/// activation, whose result the int8 GEMM reads, also when a residual
/// `Add` after the kernel reads it too), roots a group of its own;
/// absorbed nodes belong to no group.
pub(crate) fn split_groups(
    g: &Graph,
    roots: &[Option<usize>],
    patterns: &Patterns,
) -> Vec<Option<usize>> {
    let absorbed_by = &patterns.absorbed_by;
    let uses = Uses::new(g);
    let mut read = vec![false; g.values.len()];
    for m in patterns.at.iter().flatten() {
        for v in kernel_reads(&m.kind) {
            read[v.index()] = true;
        }
    }
    let mut split = roots.to_vec();
    for i in (0..g.nodes.len()).rev() {
        if absorbed_by[i].is_some() {
            split[i] = None;
            continue;
        }
        if read[g.nodes[i].output.index()] && roots[i].is_some() {
            split[i] = Some(i);
            continue;
        }
        if let Some(r) = roots[i].filter(|&r| r != i) {
            let user = uses.sole_reader(g.nodes[i].output);
            split[i] = match user {
                Some(u) if absorbed_by[u].is_some() => Some(i),
                Some(u) => split[u],
                None => Some(r),
            };
        }
    }
    split
}

/// Emits the kernel of `matched` and its step.
pub(crate) fn lower(l: &mut Lowering<'_, '_>, matched: &Matched) -> Result<(), CodegenError> {
    let output = l.graph.nodes[matched.output].output;
    match &matched.kind {
        Kind::Int8 {
            a,
            m,
            k,
            n,
            a_signed,
            a_zero_point,
            a_runtime_zero,
            runtime_multiplier,
            b,
            multipliers,
            bias,
            int_bias,
            conv,
            output: out_kind,
        } => {
            let mut a_loc = l.loc(*a)?;
            let runtime = Int8Runtime {
                zero_point: a_runtime_zero.map(|z| l.dtype(z)),
                multiplier: match runtime_multiplier {
                    Some(f) => Some(l.shape(*f)?.iter().product()),
                    None => None,
                },
                row_sums: false,
            };
            let mut runtime_locs = Vec::new();
            for value in [a_runtime_zero, runtime_multiplier].into_iter().flatten() {
                runtime_locs.push(l.loc(*value)?);
            }
            let spec = Int8GemmSpec {
                symbol: String::new(),
                m: *m,
                k: *k,
                n: *n,
                a_signed: *a_signed,
                a_zero_point: *a_zero_point,
                output: *out_kind,
                runtime,
            };
            let packed = spec.pack(
                l.cx.target,
                &Int8Weights {
                    b,
                    b_zero_points: &[0],
                    multipliers,
                    bias: bias.as_deref(),
                    int_bias: int_bias.as_deref(),
                },
            )?;
            let symbol = l.shared_kernel("q8gemm", spec.code_key(), |cx, symbol| {
                let spec = Int8GemmSpec {
                    symbol: symbol.into(),
                    ..spec.clone()
                };
                super::emit_int8_gemm(cx, &spec)
            })?;
            let Some(conv) = conv else {
                let packed = l.weights_loc(&packed);
                let out = l.define(output)?;
                let mut buffers = vec![a_loc, packed, out];
                buffers.extend(runtime_locs);
                let (extent, scratch) = (spec.extent(l.cx.target), spec.scratch_bytes(l.cx.target));
                l.kernel_with_scratch(symbol, buffers, extent, scratch, true);
                return Ok(());
            };
            // im2col of the activation's bytes, the GEMM into
            // `[batch·positions, filters]`, a transposing copy into NCHW.
            let col = l.temp(m * k);
            let im2col = l.symbol("im2col8");
            let pad = match a_runtime_zero {
                Some(z) => Pad::Runtime(l.dtype(*z)),
                None => Pad::Constant(*a_zero_point),
            };
            emit_im2col8(l.cx, &im2col, conv, pad)?;
            let mut im2col_buffers = vec![col, a_loc];
            im2col_buffers.extend(runtime_locs.first().filter(|_| a_runtime_zero.is_some()));
            l.kernel(im2col, im2col_buffers, conv.batch, true);
            a_loc = col;
            let packed = l.weights_loc(&packed);
            let bytes = out_kind.bytes();
            let product = l.temp(m * n * bytes);
            let mut buffers = vec![a_loc, packed, product];
            buffers.extend(runtime_locs);
            let (extent, scratch) = (spec.extent(l.cx.target), spec.scratch_bytes(l.cx.target));
            l.kernel_with_scratch(symbol, buffers, extent, scratch, true);
            let y_shape = l.shape(output)?;
            let positions = conv.positions();
            // y[b, f, p] = product[(b·P + p)·n + f].
            let mut in_strides = vec![(positions * n) as i64, 1];
            in_strides.extend(
                contiguous_strides(&conv.window.output)
                    .iter()
                    .map(|s| s * *n as i64),
            );
            let copy = IndexCopy {
                elem_bytes: bytes as u32,
                out_strides: contiguous_strides(&y_shape),
                maps: vec![AxisMap::Affine { start: 0, step: 1 }; y_shape.len()],
                in_strides,
                shape: y_shape,
                fill: 0,
            };
            let transpose = l.symbol("conv8_out");
            copy.emit(l.cx, &transpose)?;
            let out = l.define(output)?;
            l.kernel(transpose, vec![out, product], copy.extent(), true);
        }
        Kind::Int4 {
            x,
            m,
            k,
            n,
            block,
            signed,
            bits,
            packed,
            scales,
            zero_points,
            int8_compute,
        } => {
            let x_loc: Loc = l.loc(*x)?;
            let weights = Int4Weights {
                packed,
                scales,
                zero_points,
            };
            // Everything but the shape and number format is in `packed`.
            let (symbol, packed, extent, scratch) = if *int8_compute {
                let spec = Int4A8Spec {
                    symbol: String::new(),
                    m: *m,
                    k: *k,
                    n: *n,
                    block: *block,
                    signed: *signed,
                };
                let packed = spec.pack(l.cx.target, &weights)?;
                let symbol = l.shared_kernel("q4a8gemm", format!("{spec:?}"), |cx, symbol| {
                    let spec = Int4A8Spec {
                        symbol: symbol.into(),
                        ..spec.clone()
                    };
                    super::emit_int4_a8_gemm(cx, &spec)
                })?;
                let extent = spec.extent(l.cx.target);
                (symbol, packed, extent, spec.scratch_bytes())
            } else {
                let spec = Int4GemmSpec {
                    symbol: String::new(),
                    m: *m,
                    k: *k,
                    n: *n,
                    block: *block,
                    signed: *signed,
                    bits: *bits,
                    integer_zero_points: Int4GemmSpec::integer_zero_points(zero_points),
                };
                let packed = spec.pack(&weights)?;
                let symbol = l.shared_kernel("q4gemm", format!("{spec:?}"), |cx, symbol| {
                    let spec = Int4GemmSpec {
                        symbol: symbol.into(),
                        ..spec.clone()
                    };
                    super::emit_int4_gemm(cx, &spec)
                })?;
                (symbol, packed, spec.extent(), spec.scratch_bytes())
            };
            let packed = l.weights_loc(&packed);
            let out = l.define(output)?;
            l.kernel_with_scratch(symbol, vec![x_loc, packed, out], extent, scratch, true);
        }
        Kind::Attention8(attention) => crate::kernels::attention::lower_int8(l, attention)?,
    }
    Ok(())
}
