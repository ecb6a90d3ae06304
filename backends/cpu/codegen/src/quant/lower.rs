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
//!   [`Int8GemmSpec`] kernel computes the last of these nodes.
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

use m4c_ir::op::ConvAttrs;
use m4c_ir::{DType, Graph, Op, Tensor, ValueDef, ValueId};

use super::conv8::{emit_im2col8, ConvShape, Pad};
use super::{Int4GemmSpec, Int4Weights, Int8GemmSpec, Int8Output, Int8Runtime, Int8Weights};
use crate::graph::{Loc, Lowering};
use crate::kernels::contiguous_strides;
use crate::kernels::movement::{AxisMap, IndexCopy};
use crate::kernels::window::Window;
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
    },
}

/// The patterns of `g`: per node, the match whose kernel it is; and per
/// node, whether a quantised kernel computes it (so it gets no kernel of
/// its own), with the node whose kernel that is.
pub(crate) struct Patterns {
    pub at: Vec<Option<Matched>>,
    pub absorbed_by: Vec<Option<usize>>,
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
    fn sole_reader(&self, v: ValueId) -> Option<usize> {
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
fn ints(t: &Tensor) -> Option<Vec<i32>> {
    Some(match t.dtype {
        DType::I8 => t.to_i8_vec().ok()?.into_iter().map(i32::from).collect(),
        DType::U8 => t.to_u8_vec().ok()?.into_iter().map(i32::from).collect(),
        DType::I32 => t.to_i32_vec().ok()?,
        _ => return None,
    })
}

/// A one-element integer constant.
fn int_scalar(t: &Tensor) -> Option<i32> {
    match ints(t)?.as_slice() {
        [v] => Some(*v),
        _ => None,
    }
}

/// A one-element f32 constant.
fn f32_scalar(t: &Tensor) -> Option<f32> {
    match t.to_f32_vec().ok()?.as_slice() {
        [v] => Some(*v),
        _ => None,
    }
}

/// The values of a parameter broadcast over a rank-`rank` tensor that
/// vary at most along `axis` (of length `len`): one value, or one per
/// index of that axis.
fn along(
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
            } => super::pattern4::int4(&uses, i, *trans_b).or_else(|| int8(&uses, i, *trans_b)),
            Op::Conv(attrs) => int8_conv(&uses, i, attrs),
            _ => None,
        };
        if let Some((matched, reads)) = found {
            let output = matched.output;
            inputs.push((output, reads));
            at[output] = Some(matched);
        }
    }
    // A kernel reads its run-time operands (the quantised activation,
    // run-time zero points and multipliers) directly, but the memory plan
    // keeps a value only until the last kernel of its graph readers: a
    // match none of whose operands' readers runs at or after its kernel
    // (the dequantised activation of a residual block, also read by the
    // skip connection's Add before the kernel) is given up, and absorption
    // is worked out again without it.
    loop {
        let absorbed_by = absorption(&uses, &at, &inputs);
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
            return Patterns { at, absorbed_by };
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

/// A run-time int8/uint8 operand `(Cast(q) − za)·sa` of an int8 product:
/// per-tensor zero point (a constant, or computed at run time) and scale.
struct AOperand {
    q: ValueId,
    signed: bool,
    zero_point: i32,
    runtime_zero: Option<ValueId>,
    scale: f32,
    nodes: Vec<usize>,
}

fn a_operand(uses: &Uses<'_>, value: ValueId) -> Option<AOperand> {
    let a = uses.dequant(value)?;
    let signed = match uses.dtype(a.q) {
        DType::I8 => true,
        DType::U8 => false,
        _ => return None,
    };
    if uses.constant(a.q).is_some() {
        return None;
    }
    let (zero_point, runtime_zero) = match a.zero {
        Some(z) if uses.constant(z).is_none() => {
            if !matches!(uses.dtype(z), DType::I8 | DType::U8 | DType::I32) {
                return None;
            }
            (0, Some(z))
        }
        Some(z) => (
            int_scalar(uses.constant(z)?).or_else(|| {
                let v = f32_scalar(uses.constant(z)?)?;
                (v.fract() == 0.0 && v.abs() < 1e6).then_some(v as i32)
            })?,
            None,
        ),
        None => (0, None),
    };
    let scale = match a.scale {
        Some(s) => f32_scalar(uses.constant(s)?)?,
        None => 1.0,
    };
    Some(AOperand {
        q: a.q,
        signed,
        zero_point,
        runtime_zero,
        scale,
        nodes: a.nodes,
    })
}

/// The constant operand of an int8 product, `k × n` as the kernel takes
/// it: stored `[n, k]` when `trans_b` (a transposed MatMul weight, or a
/// convolution's filters `[n, channels, taps..]`), else `[k, n]`; its
/// zero points and scales vary at most along the column axis of a tensor
/// of rank `rank`. Returns B centred, the per-column scales and the
/// dequantisation nodes read through.
fn b_operand(
    uses: &Uses<'_>,
    value: ValueId,
    integer: bool,
    (k, n): (usize, usize),
    trans_b: bool,
    rank: usize,
) -> Option<(Vec<i32>, Vec<f32>, Vec<usize>)> {
    let axis = if trans_b { 0 } else { rank - 1 };
    let (b, scales, nodes) = match uses.constant(value) {
        Some(t) if integer => (ints(t)?, vec![1.0], Vec::new()),
        _ => {
            let d = uses.dequant(value)?;
            let q = uses.constant(d.q)?;
            if !matches!(q.dtype, DType::I8 | DType::U8) {
                return None;
            }
            let values = ints(q)?;
            let zero: Vec<i32> = match d.zero {
                None => vec![0],
                Some(z) => {
                    let t = uses.constant(z)?;
                    let zs: Vec<f32> = match ints(t) {
                        Some(v) => v.into_iter().map(|v| v as f32).collect(),
                        None => t.to_f32_vec().ok()?,
                    };
                    let zs = along(zs, &t.shape, rank, n, axis)?;
                    if zs.iter().any(|z| z.fract() != 0.0 || z.abs() > 255.0) {
                        return None;
                    }
                    zs.into_iter().map(|z| z as i32).collect()
                }
            };
            let column = |i: usize| if trans_b { i / k } else { i % n };
            let centred = values
                .iter()
                .enumerate()
                .map(|(i, &v)| v - zero[if zero.len() == 1 { 0 } else { column(i) }])
                .collect();
            let scales = match d.scale {
                None => vec![1.0],
                Some(s) => {
                    let t = uses.constant(s)?;
                    along(t.to_f32_vec().ok()?, &t.shape, rank, n, axis)?
                }
            };
            (centred, scales, d.nodes)
        }
    };
    if b.len() != k * n {
        return None;
    }
    // The kernel takes B as `k × n`.
    let b: Vec<i32> = if trans_b {
        (0..k * n).map(|i| b[(i % n) * k + i / n]).collect()
    } else {
        b
    };
    super::gemm8::column_signs(&b, n).ok()?;
    Some((b, scales, nodes))
}

/// What follows an int8 product inside its kernel.
struct Tail {
    core: Vec<usize>,
    multipliers: Vec<f32>,
    bias: Option<Vec<f32>>,
    runtime_multiplier: Option<ValueId>,
    output: Int8Output,
}

/// The nodes after the product node `first` (value `value`, `n` columns
/// along axis 1 of a rank-`rank` result) that its epilogue computes: for
/// an i32 product, `Cast f32 → Mul multiplier`; then `Add bias` (unless
/// `bias` is already given) and `Quantize` into int8/uint8.
fn tail(
    uses: &Uses<'_>,
    first: usize,
    integer: bool,
    (n, rank): (usize, usize),
    mut multipliers: Vec<f32>,
    mut bias: Option<Vec<f32>>,
) -> Tail {
    let g = uses.g;
    let mut core = vec![first];
    let mut value = g.nodes[first].output;
    let mut runtime_multiplier = None;
    let mut output = if integer {
        Int8Output::I32
    } else {
        Int8Output::F32
    };
    let row =
        |t: &Tensor| -> Option<Vec<f32>> { along(t.to_f32_vec().ok()?, &t.shape, rank, n, 1) };
    let other = |inputs: &[ValueId], v: ValueId| inputs.iter().copied().find(|&x| x != v);
    if integer {
        // QLinearMatMul/QLinearConv: Cast to f32, Mul by the (per-column)
        // multiplier.
        if let Some(cast) = uses.sole_reader(value) {
            let cast_node = &g.nodes[cast];
            if let Op::Cast { to: DType::F32 } = cast_node.op {
                if let Some(mul) = uses.sole_reader(cast_node.output) {
                    let mul_node = &g.nodes[mul];
                    let factor = (mul_node.op == Op::Mul)
                        .then(|| other(&mul_node.inputs, cast_node.output))
                        .flatten();
                    // A constant multiplier, or (dynamic quantisation) one
                    // computed at run time: one value or one per column.
                    let runtime_ok = |f: ValueId| -> bool {
                        uses.shape(f).is_some_and(|shape| {
                            let len: usize = shape.iter().product();
                            uses.dtype(f) == DType::F32
                                && (len == 1 || along(vec![0.0; len], &shape, rank, n, 1).is_some())
                        })
                    };
                    match factor {
                        Some(f) if uses.constant(f).is_some() => {
                            if let Some(factor) = uses.constant(f).and_then(row) {
                                multipliers = factor;
                                output = Int8Output::F32;
                            }
                        }
                        Some(f) if runtime_ok(f) => {
                            runtime_multiplier = Some(f);
                            output = Int8Output::F32;
                        }
                        _ => {}
                    }
                    if output == Int8Output::F32 {
                        core.extend([cast, mul]);
                        value = mul_node.output;
                    }
                }
            }
        }
    }
    if output == Int8Output::F32 {
        if let Some(add) = uses.sole_reader(value).filter(|_| bias.is_none()) {
            let add_node = &g.nodes[add];
            let b = (add_node.op == Op::Add)
                .then(|| other(&add_node.inputs, value))
                .flatten()
                .and_then(|b| uses.constant(b))
                .and_then(row)
                .filter(|b| b.len() == n);
            if let Some(b) = b {
                bias = Some(b);
                core.push(add);
                value = add_node.output;
            }
        }
        if let Some(quantize) = uses.sole_reader(value) {
            let q_node = &g.nodes[quantize];
            if let Op::Quantize { to } = q_node.op {
                let params = (|| {
                    let scale = f32_scalar(uses.constant(q_node.inputs[1])?)?;
                    let zero_point = int_scalar(uses.constant(q_node.inputs[2])?)?;
                    (q_node.inputs[0] == value).then_some((scale, zero_point))
                })();
                if let (Some((scale, zero_point)), DType::I8 | DType::U8) = (params, to) {
                    output = Int8Output::Quantized {
                        signed: to == DType::I8,
                        scale,
                        zero_point,
                    };
                    core.push(quantize);
                }
            }
        }
    }
    Tail {
        core,
        multipliers,
        bias,
        runtime_multiplier,
        output,
    }
}

/// The int8 GEMM pattern ending at (or after) the MatMul `mm`; with the
/// input-side nodes it reads through.
fn int8(uses: &Uses<'_>, mm: usize, trans_b: bool) -> Option<(Matched, Vec<usize>)> {
    let node = &uses.g.nodes[mm];
    let (a_value, b_value) = (node.inputs[0], node.inputs[1]);
    let a_shape = uses.shape(a_value)?;
    let b_shape = uses.shape(b_value)?;
    let (k, n) = match b_shape[..] {
        [r, c] if trans_b => (c, r),
        [r, c] => (r, c),
        _ => return None,
    };
    if a_shape.len() < 2 || a_shape[a_shape.len() - 1] != k {
        return None;
    }
    let m: usize = a_shape[..a_shape.len() - 1].iter().product();
    let integer = uses.dtype(a_value) == DType::I32;
    if !integer && uses.dtype(a_value) != DType::F32 {
        return None;
    }
    let a = a_operand(uses, a_value)?;
    let (b, b_scales, b_nodes) = b_operand(uses, b_value, integer, (k, n), trans_b, 2)?;
    let multipliers = b_scales.iter().map(|s| s * a.scale).collect();
    let tail = tail(uses, mm, integer, (n, 2), multipliers, None);
    Some(matched(a, (m, k, n), b, b_nodes, tail, None, None))
}

/// The int8 convolution pattern ending at (or after) the Conv `conv`:
/// ungrouped, a run-time int8/uint8 activation, constant filters; an
/// integer convolution's i32 bias is added to the i32 sums, a float
/// convolution's (QDQ) after the scaling.
fn int8_conv(uses: &Uses<'_>, conv: usize, attrs: &ConvAttrs) -> Option<(Matched, Vec<usize>)> {
    let node = &uses.g.nodes[conv];
    let (x_shape, w_shape) = (uses.shape(node.inputs[0])?, uses.shape(node.inputs[1])?);
    let y_shape = uses.shape(node.output)?;
    if attrs.group != 1 || x_shape.len() < 3 || w_shape.len() != x_shape.len() {
        return None;
    }
    let integer = uses.dtype(node.inputs[0]) == DType::I32;
    if !integer && uses.dtype(node.inputs[0]) != DType::F32 {
        return None;
    }
    let sp = x_shape.len() - 2;
    let shape = ConvShape {
        batch: x_shape[0],
        channels: x_shape[1],
        window: Window {
            input: x_shape[2..].to_vec(),
            output: y_shape[2..].to_vec(),
            kernel: w_shape[2..].to_vec(),
            strides: attrs.strides.clone(),
            pads: attrs.pads[..sp].to_vec(),
            dilations: attrs.dilations.clone(),
        },
    };
    let (m, k, n) = (
        shape.batch * shape.positions(),
        shape.channels * shape.taps(),
        w_shape[0],
    );
    if m == 0 || w_shape[1] != shape.channels {
        return None;
    }
    let a = a_operand(uses, node.inputs[0])?;
    let rank = w_shape.len();
    let (b, b_scales, b_nodes) = b_operand(uses, node.inputs[1], integer, (k, n), true, rank)?;
    let multipliers = b_scales.iter().map(|s| s * a.scale).collect();
    let bias = node.inputs.get(2).map(|&v| uses.constant(v));
    let (int_bias, bias) = match bias {
        None => (None, None),
        Some(t) => {
            let t = t.filter(|t| t.shape == [n])?;
            if integer {
                (Some(ints(t).filter(|_| t.dtype == DType::I32)?), None)
            } else {
                (None, Some(t.to_f32_vec().ok()?))
            }
        }
    };
    let tail = tail(uses, conv, integer, (n, rank), multipliers, bias);
    Some(matched(
        a,
        (m, k, n),
        b,
        b_nodes,
        tail,
        Some(shape),
        int_bias,
    ))
}

/// The match of an int8 product: its kernel and the input-side nodes read.
fn matched(
    a: AOperand,
    (m, k, n): (usize, usize, usize),
    b: Vec<i32>,
    b_nodes: Vec<usize>,
    tail: Tail,
    conv: Option<ConvShape>,
    int_bias: Option<Vec<i32>>,
) -> (Matched, Vec<usize>) {
    let output = *tail.core.last().expect("the product");
    let mut inputs = a.nodes;
    inputs.extend(b_nodes);
    (
        Matched {
            output,
            core: tail.core,
            kind: Kind::Int8 {
                a: a.q,
                m,
                k,
                n,
                a_signed: a.signed,
                a_zero_point: a.zero_point,
                a_runtime_zero: a.runtime_zero,
                runtime_multiplier: tail.runtime_multiplier,
                b,
                multipliers: tail.multipliers,
                bias: tail.bias,
                int_bias,
                conv: conv.map(Box::new),
                output: tail.output,
            },
        },
        inputs,
    )
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
            };
            let mut runtime_locs = Vec::new();
            for value in [a_runtime_zero, runtime_multiplier].into_iter().flatten() {
                runtime_locs.push(l.loc(*value)?);
            }
            let symbol = l.symbol("q8gemm");
            let spec = Int8GemmSpec {
                symbol: symbol.clone(),
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
            let Some(conv) = conv else {
                super::emit_int8_gemm(l.cx, &spec)?;
                let packed = l.weights_loc(&packed);
                let out = l.define(output)?;
                let mut buffers = vec![a_loc, packed, out];
                buffers.extend(runtime_locs);
                l.kernel(symbol, buffers, spec.extent(l.cx.target), true);
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
            super::emit_int8_gemm(l.cx, &spec)?;
            let packed = l.weights_loc(&packed);
            let bytes = out_kind.bytes();
            let product = l.temp(m * n * bytes);
            let mut buffers = vec![a_loc, packed, product];
            buffers.extend(runtime_locs);
            l.kernel(symbol, buffers, spec.extent(l.cx.target), true);
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
        } => {
            let x_loc: Loc = l.loc(*x)?;
            let symbol = l.symbol("q4gemm");
            let spec = Int4GemmSpec {
                symbol: symbol.clone(),
                m: *m,
                k: *k,
                n: *n,
                block: *block,
                signed: *signed,
                bits: *bits,
            };
            let packed = spec.pack(&Int4Weights {
                packed,
                scales,
                zero_points,
            })?;
            super::emit_int4_gemm(l.cx, &spec)?;
            let packed = l.weights_loc(&packed);
            let out = l.define(output)?;
            l.kernel_with_scratch(
                symbol,
                vec![x_loc, packed, out],
                spec.extent(),
                spec.scratch_bytes(),
                true,
            );
        }
    }
    Ok(())
}
