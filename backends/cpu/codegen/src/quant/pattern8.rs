//! The int8 patterns of the quantised lowering (see `lower.rs`): an int8
//! product — `MatMul`, or an ungrouped `Conv` computed as im2col + GEMM —
//! of a run-time int8/uint8 activation and constant int8 weights, with the
//! nodes after it that the GEMM's epilogue computes.

use m4c_ir::op::ConvAttrs;
use m4c_ir::{DType, Op, Tensor, ValueId};

use super::conv8::ConvShape;
use super::lower::{along, f32_scalar, int_scalar, ints, Kind, Matched, Uses};
use super::Int8Output;
use crate::kernels::window::Window;

/// A run-time int8/uint8 operand `(Cast(q) − za)·sa` of an int8 product:
/// per-tensor zero point (a constant, or computed at run time) and scale.
pub(super) struct AOperand {
    pub(super) q: ValueId,
    pub(super) signed: bool,
    pub(super) zero_point: i32,
    pub(super) runtime_zero: Option<ValueId>,
    pub(super) scale: f32,
    pub(super) nodes: Vec<usize>,
}

pub(super) fn a_operand(uses: &Uses<'_>, value: ValueId) -> Option<AOperand> {
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
pub(super) fn int8(uses: &Uses<'_>, mm: usize, trans_b: bool) -> Option<(Matched, Vec<usize>)> {
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
pub(super) fn int8_conv(
    uses: &Uses<'_>,
    conv: usize,
    attrs: &ConvAttrs,
) -> Option<(Matched, Vec<usize>)> {
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
#[allow(
    clippy::expect_used,
    reason = "a tail's core starts with the product node (`tail` builds it so)"
)]
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
