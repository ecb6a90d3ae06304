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

use m4c_ir::{DType, Graph, Op, Tensor, ValueDef, ValueId};

use super::{Int4GemmSpec, Int4Weights, Int8GemmSpec, Int8Output, Int8Runtime, Int8Weights};
use crate::graph::{Loc, Lowering};
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

/// The values of a parameter broadcast over a `[rows, cols]` matrix that
/// vary at most along `axis`: one value, or one per index of that axis.
fn along(values: Vec<f32>, shape: &[usize], matrix: [usize; 2], axis: usize) -> Option<Vec<f32>> {
    if values.len() == 1 {
        return Some(values);
    }
    let mut full = vec![1; 2usize.saturating_sub(shape.len())];
    full.extend(shape);
    if full.len() != 2 || full[axis] != matrix[axis] || full[1 - axis] != 1 {
        return None;
    }
    Some(values)
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
        let Op::MatMul {
            trans_a: false,
            trans_b,
        } = node.op
        else {
            continue;
        };
        let found = super::pattern4::int4(&uses, i, trans_b).or_else(|| int8(&uses, i, trans_b));
        if let Some((matched, reads)) = found {
            let output = matched.output;
            inputs.push((output, reads));
            at[output] = Some(matched);
        }
    }
    // The kernel computing each node: a match's core, or (for the
    // dequantisation nodes of its inputs) the last match reading them.
    let mut absorbed_by: Vec<Option<usize>> = vec![None; g.nodes.len()];
    for m in at.iter().flatten() {
        for &c in &m.core {
            absorbed_by[c] = Some(m.output);
        }
    }
    let core = absorbed_by.clone();
    for (output, reads) in &inputs {
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
    Patterns { at, absorbed_by }
}

/// The fusion groups of `roots` without the nodes a quantised kernel
/// computes: a node that joined the group of an absorbed consumer roots a
/// group of its own (the run-time `Quantize` of an activation, whose
/// result the int8 GEMM reads); absorbed nodes belong to no group.
pub(crate) fn split_groups(
    g: &Graph,
    roots: &[Option<usize>],
    absorbed_by: &[Option<usize>],
) -> Vec<Option<usize>> {
    let uses = Uses::new(g);
    let mut split = roots.to_vec();
    for i in (0..g.nodes.len()).rev() {
        if absorbed_by[i].is_some() {
            split[i] = None;
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

/// The int8 GEMM pattern ending at (or after) the MatMul `mm`; with the
/// input-side nodes it reads through.
fn int8(uses: &Uses<'_>, mm: usize, trans_b: bool) -> Option<(Matched, Vec<usize>)> {
    let g = uses.g;
    let node = &g.nodes[mm];
    let (a_value, b_value) = (node.inputs[0], node.inputs[1]);
    let a_shape = uses.shape(a_value)?;
    let b_shape = uses.shape(b_value)?;
    // B as stored (`[n, k]` when transposed) and its column axis.
    let ((k, n), stored, column_axis) = match b_shape[..] {
        [r, c] if trans_b => ((c, r), [r, c], 0),
        [r, c] => ((r, c), [r, c], 1),
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
    // A: a run-time int8/uint8 tensor, per-tensor zero point and scale.
    let a = uses.dequant(a_value)?;
    let a_signed = match uses.dtype(a.q) {
        DType::I8 => true,
        DType::U8 => false,
        _ => return None,
    };
    if uses.constant(a.q).is_some() {
        return None;
    }
    let (a_zero_point, a_runtime_zero) = match a.zero {
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
    let a_scale = match a.scale {
        Some(s) => f32_scalar(uses.constant(s)?)?,
        None => 1.0,
    };
    // B: constant; centred values and per-column scales.
    let (b, b_scales, b_nodes) = match uses.constant(b_value) {
        Some(t) if integer => (ints(t)?, vec![1.0], Vec::new()),
        _ => {
            let d = uses.dequant(b_value)?;
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
                    let zs = along(zs, &t.shape, stored, column_axis)?;
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
                    along(t.to_f32_vec().ok()?, &t.shape, stored, column_axis)?
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
    if super::gemm8::column_signs(&b, n).is_err() {
        return None;
    }
    // The tail after the MatMul.
    let mut core = vec![mm];
    let mut value = node.output;
    let mut multipliers: Vec<f32> = b_scales.iter().map(|s| s * a_scale).collect();
    let mut bias = None;
    let mut runtime_multiplier = None;
    let mut output = if integer {
        Int8Output::I32
    } else {
        Int8Output::F32
    };
    let row = |t: &Tensor| -> Option<Vec<f32>> { along(t.to_f32_vec().ok()?, &t.shape, [1, n], 1) };
    let other = |inputs: &[ValueId], v: ValueId| inputs.iter().copied().find(|&x| x != v);
    if integer {
        // QLinearMatMul: Cast to f32, Mul by the (per-column) multiplier.
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
                                && (len == 1 || along(vec![0.0; len], &shape, [1, n], 1).is_some())
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
        if let Some(add) = uses.sole_reader(value) {
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
    let output_node = *core.last().expect("the MatMul");
    let mut inputs = a.nodes;
    inputs.extend(b_nodes);
    Some((
        Matched {
            output: output_node,
            core,
            kind: Kind::Int8 {
                a: a.q,
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
                output,
            },
        },
        inputs,
    ))
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
            output: out_kind,
        } => {
            let a_loc = l.loc(*a)?;
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
                },
            )?;
            super::emit_int8_gemm(l.cx, &spec)?;
            let packed = l.weights_loc(&packed);
            let out = l.define(output)?;
            let mut buffers = vec![a_loc, packed, out];
            buffers.extend(runtime_locs);
            l.kernel(symbol, buffers, spec.extent(l.cx.target), true);
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
