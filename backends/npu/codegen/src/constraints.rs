//! What the NPU takes, as named constraints with reason text: the one
//! place `refuse` (and so `partition`, `inspect`, `m4c backends` and the
//! code generator's own split) asks. A node is placed on the NPU when no
//! constraint is violated; [`lower`](crate::lower) has a layer for every
//! node these constraints accept.

use m4c_ir::{DType, Graph, Node, Op, OpKind, ValueDef, ValueId};

/// A named support rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Constraint {
    /// Short name, printed before the reason.
    pub name: &'static str,
    /// What the rule demands and why.
    pub rule: &'static str,
}

/// Every rule, in the order they are checked (for docs and `m4c backends`).
pub const CONSTRAINTS: [Constraint; 11] = [
    Constraint {
        name: "op",
        rule: "the operator has an NPU kernel: MatMul, Conv, Add/Sub/Mul/Max/Min, Div/Pow by a constant scalar, unary functions as 256-entry LUTs (GELU, Sigmoid, Tanh, Exp, Erf, ...), Softmax, LayerNorm/RMSNorm, MaxPool/AveragePool, ReduceSum/ReduceMax, Resize (nearest as a DMA pattern, linear as DMA neighbours and a vector-unit interpolation), Reshape, and Transpose/Slice/Concat/Expand/Gather/Pad as DMA address patterns",
    },
    Constraint {
        name: "static-shape",
        rule: "every operand and the result have static shapes (programs are generated per shape)",
    },
    Constraint {
        name: "float-activations",
        rule: "run-time operands and the result are f32 (the NPU computes them in calibrated int8)",
    },
    Constraint {
        name: "size",
        rule: "every tensor has at most 16 Mi elements (the DRAM image of one layer); a MatMul's constant B may exceed it (split into column blocks)",
    },
    Constraint {
        name: "matmul-layout",
        rule: "MatMul without a transposed A (a constant B is transposed when compiled, a run-time B by a DMA pattern); a constant B is 2-D (per-channel int8 weights); a run-time B has A's batch dimensions",
    },
    Constraint {
        name: "conv",
        rule: "Conv is 2-D over NCHW (or 1-D, as 2-D of height 1) with constant weights and bias, one group (any stride, padding, dilation: im2col + GEMM or the direct kernel, whichever simulates faster) or depthwise (group = channels, one filter each; one image, equal strides, uniform padding, no dilation: the vector unit's depthwise kernel)",
    },
    Constraint {
        name: "pool",
        rule: "MaxPool and AveragePool are 2-D over NCHW (DMA window patterns over NCHW planes or NHWC channel vectors, whichever simulates faster, and reductions on the vector unit); AveragePool counts the padding (count_include_pad, or no padding) and pads begin and end alike (no ceil-mode tail)",
    },
    Constraint {
        name: "reduce-axes",
        rule: "ReduceSum and ReduceMax reduce the trailing axes (each output is the sum or maximum of one contiguous row: GlobalAveragePool)",
    },
    Constraint {
        name: "gather-indices",
        rule: "Gather takes constant indices within the axis (a q/k/v split, a CLS pick: a DMA pattern), or run-time integer indices into a constant 2-D table along axis 0 (an embedding lookup: one DMA row load per index, its address written at run time from the index; the table may exceed the size rule up to 256 Mi elements)",
    },
    Constraint {
        name: "lut-scalar",
        rule: "Div and Pow take a constant scalar second operand (evaluated as a lookup table)",
    },
    Constraint {
        name: "last-axis",
        rule: "Softmax and Norm work over the last axis, Norm's scale and bias are constants",
    },
];

/// Largest tensor one layer takes, in elements.
pub(crate) const MAX_ELEMENTS: usize = 16 << 20;

/// Largest embedding table, in elements (int8 bytes of one layer's
/// DRAM image, under the container's 1 GiB).
const MAX_TABLE_ELEMENTS: usize = 256 << 20;

/// Whether `node` is an embedding lookup the NPU takes: a Gather along
/// axis 0 of a constant float 2-D table by run-time integer indices.
pub fn is_embedding(g: &Graph, node: &Node) -> bool {
    let Op::Gather { axis: 0 } = node.op else {
        return false;
    };
    let (table, idx) = (g.value(node.inputs[0]), g.value(node.inputs[1]));
    is_const(g, node.inputs[0])
        && table.ty.dtype.is_float()
        && table.ty.static_shape().is_some_and(|s| s.len() == 2)
        && !is_const(g, node.inputs[1])
        && matches!(idx.ty.dtype, DType::I64 | DType::I32)
}

/// Unary operators evaluated through a lookup table.
pub const LUT_OPS: [OpKind; 10] = [
    OpKind::Exp,
    OpKind::Log,
    OpKind::Sqrt,
    OpKind::Erf,
    OpKind::Tanh,
    OpKind::Sigmoid,
    OpKind::Sin,
    OpKind::Cos,
    OpKind::Floor,
    OpKind::Gelu,
];

/// The operators the NPU has layers for.
pub fn ops() -> Vec<OpKind> {
    let mut ops = vec![
        OpKind::MatMul,
        OpKind::Conv,
        OpKind::Add,
        OpKind::Sub,
        OpKind::Mul,
        OpKind::Max,
        OpKind::Min,
        OpKind::Div,
        OpKind::Pow,
        OpKind::Softmax,
        OpKind::Norm,
        OpKind::ReduceSum,
        OpKind::ReduceMax,
        OpKind::MaxPool,
        OpKind::AvgPool,
        OpKind::Reshape,
        OpKind::Transpose,
        OpKind::Slice,
        OpKind::Concat,
        OpKind::Expand,
        OpKind::Gather,
        OpKind::Resize,
        OpKind::Pad,
    ];
    ops.extend(LUT_OPS);
    ops
}

/// Whether value `v` of `g` is a constant.
pub fn is_const(g: &Graph, v: ValueId) -> bool {
    matches!(g.value(v).def, ValueDef::Const(_))
}

fn violated(name: &'static str, detail: String) -> Option<String> {
    Some(format!("{name}: {detail}"))
}

/// The first constraint `node` of `g` violates, as `name: detail`.
pub fn refuse(g: &Graph, node: &Node) -> Option<String> {
    let kind = node.op.kind();
    if !ops().contains(&kind) {
        return violated("op", format!("no NPU kernel for {}", kind.name()));
    }
    let values = node.inputs.iter().chain(std::iter::once(&node.output));
    // A MatMul's constant B is split into column blocks that each fit
    // (`lower::matmul`), so only the run-time operands and the result
    // must fit one layer's image.
    let split_b = matches!(node.op, Op::MatMul { .. }) && is_const(g, node.inputs[1]);
    // An embedding table stays in DRAM: only the rows looked up move.
    let table = is_embedding(g, node).then(|| node.inputs[0]);
    for &v in values.clone() {
        if split_b && v == node.inputs[1] {
            continue;
        }
        if Some(v) == table {
            match g.value(v).ty.num_elements() {
                Some(n) if n <= MAX_TABLE_ELEMENTS => continue,
                n => return violated("size", format!("an embedding table of {n:?} elements")),
            }
        }
        let value = g.value(v);
        match value.ty.num_elements() {
            None => {
                return violated(
                    "static-shape",
                    format!("{} has shape {}", value.name, value.ty),
                )
            }
            Some(n) if n > MAX_ELEMENTS => {
                return violated("size", format!("{} has {n} elements", value.name))
            }
            Some(_) => {}
        }
    }
    if let Op::Gather { .. } = node.op {
        if !is_const(g, node.inputs[1]) && !is_embedding(g, node) {
            return violated(
                "gather-indices",
                "run-time indices gather rows of a constant 2-D table along axis 0 only".into(),
            );
        }
    }
    // Constant integer indices are compile-time addresses, not operands.
    let indices = matches!(node.op, Op::Gather { .. }).then(|| node.inputs[1]);
    for &v in values.filter(|&&v| Some(v) != indices) {
        let dt = g.value(v).ty.dtype;
        if dt != DType::F32 && !(is_const(g, v) && dt.is_float()) {
            return violated(
                "float-activations",
                format!("{} on {dt} tensors", kind.name()),
            );
        }
    }
    refuse_op(g, node)
}

/// Per-operator rules.
fn refuse_op(g: &Graph, node: &Node) -> Option<String> {
    let shape = |i: usize| {
        g.value(node.inputs[i])
            .ty
            .static_shape()
            .unwrap_or_default()
    };
    let konst = |i: usize| is_const(g, node.inputs[i]);
    match &node.op {
        Op::MatMul { trans_a, .. } => {
            let (a, b) = (shape(0), shape(1));
            if *trans_a {
                return violated("matmul-layout", "transposed A operand".into());
            }
            if konst(0) {
                return violated("matmul-layout", "constant A operand".into());
            }
            if a.len() < 2 || b.len() < 2 {
                return violated(
                    "matmul-layout",
                    format!("operands of rank {} and {}", a.len(), b.len()),
                );
            }
            if konst(1) && b.len() != 2 {
                return violated("matmul-layout", format!("constant B of rank {}", b.len()));
            }
            if !konst(1) && (a.len() != b.len() || a[..a.len() - 2] != b[..b.len() - 2]) {
                return violated(
                    "matmul-layout",
                    format!("run-time B {b:?} does not share A's batch {a:?}"),
                );
            }
            None
        }
        Op::Conv(attrs) => {
            if !node.inputs[1..].iter().all(|&v| is_const(g, v)) {
                return violated("conv", "run-time weights or bias".into());
            }
            let (x, w) = (shape(0), shape(1));
            let geo = match crate::conv::Geometry::new(attrs, &x, w.get(2..).unwrap_or_default()) {
                Ok(geo) => geo,
                Err(why) => return violated("conv", why),
            };
            let depthwise = attrs.group == geo.x[1] && w[0] == geo.x[1] && w[1] == 1;
            if attrs.group > 1 && !depthwise {
                return violated(
                    "conv",
                    format!(
                        "{} groups of {w:?} weights: only one group or depthwise",
                        attrs.group
                    ),
                );
            }
            (depthwise && geo.direct(w[0]).is_none()).then(|| {
                format!("conv: depthwise with strides {:?}, pads {:?}, dilations {:?} on {} images: the depthwise kernel takes one image, equal strides, uniform pads, no dilation", attrs.strides, attrs.pads, attrs.dilations, geo.x[0])
            })
        }
        Op::ReduceSum { axes, .. } | Op::ReduceMax { axes, .. } => {
            let rank = shape(0).len();
            let mut sorted = axes.clone();
            sorted.sort_unstable();
            let first = rank.checked_sub(sorted.len());
            let trailing =
                !sorted.is_empty() && first.is_some_and(|f| sorted.iter().copied().eq(f..rank));
            (!trailing).then(|| {
                format!(
                    "reduce-axes: axes {axes:?} of a rank-{rank} input are not its trailing axes"
                )
            })
        }
        Op::MaxPool(pool) | Op::AvgPool { pool, .. } => {
            let x = shape(0);
            if x.len() != 4 || pool.kernel.len() != 2 {
                return violated(
                    "pool",
                    format!(
                        "{}-D pooling of a rank-{} input",
                        pool.kernel.len(),
                        x.len()
                    ),
                );
            }
            if let Op::AvgPool {
                count_include_pad, ..
            } = node.op
            {
                let padded = pool.pads.iter().any(|&p| p != 0);
                let (begin, end) = pool.pads.split_at(pool.pads.len() / 2);
                if padded && (!count_include_pad || begin != end) {
                    return violated(
                        "pool",
                        format!(
                            "AveragePool with pads {:?} (count_include_pad {count_include_pad})",
                            pool.pads
                        ),
                    );
                }
            }
            let attrs = m4c_ir::op::ConvAttrs {
                strides: pool.strides.clone(),
                pads: pool.pads.clone(),
                dilations: pool.dilations.clone(),
                group: 1,
            };
            crate::conv::Geometry::new(&attrs, &[x[0] * x[1], 1, x[2], x[3]], &pool.kernel)
                .err()
                .map(|why| format!("pool: {why}"))
        }
        Op::Gather { axis } => {
            let len = shape(0).get(*axis).copied().unwrap_or(0) as i64;
            let idx = g.value(node.inputs[1]);
            let ValueDef::Const(t) = &idx.def else {
                return None;
            };
            let bad = m4c_ops::Value::from_tensor(t)
                .map(|v| m4c_ops::as_f64(&v))
                .map_err(|e| e.to_string())
                .map(|v| {
                    v.into_iter()
                        .find(|&i| i < -(len as f64) || i >= len as f64)
                });
            match bad {
                Ok(None) => None,
                Ok(Some(i)) => violated(
                    "gather-indices",
                    format!("index {i} outside an axis of {len}"),
                ),
                Err(e) => violated("gather-indices", e),
            }
        }
        Op::Div | Op::Pow => {
            let n = g.value(node.inputs[1]).ty.num_elements();
            (!(konst(1) && n == Some(1)))
                .then(|| "lut-scalar: the second operand is not a constant scalar".to_string())
        }
        Op::Softmax { axis } if *axis + 1 != shape(0).len() => violated(
            "last-axis",
            format!("Softmax over axis {axis} of {:?}", shape(0)),
        ),
        Op::Norm { axis, .. } => {
            if *axis + 1 != shape(0).len() {
                return violated(
                    "last-axis",
                    format!("Norm over axis {axis} of {:?}", shape(0)),
                );
            }
            let cols = shape(0).last().copied().unwrap_or(0);
            node.inputs[1..].iter().find_map(|&p| {
                let n = g.value(p).ty.num_elements();
                (!is_const(g, p) || n != Some(cols)).then(|| {
                    format!(
                        "last-axis: Norm parameter {} is not a constant of {cols}",
                        g.value(p).name
                    )
                })
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use m4c_ir::{Tensor, TensorType};

    #[test]
    fn rules_name_themselves() {
        let mut g = Graph::new("g");
        let x = g.add_input("x", TensorType::fixed(DType::F32, &[2, 4, 8]));
        let y = g.add_input("y", TensorType::fixed(DType::F32, &[1, 4, 8]));
        let i = g.add_input("i", TensorType::fixed(DType::I64, &[3]));
        let w = g.add_const("w", Tensor::from_f32(&[8, 3], &[0.5; 24]));
        let two = g.add_const("two", Tensor::from_f32(&[], &[2.0]));
        let nodes = [
            g.add_node(
                Op::MatMul {
                    trans_a: false,
                    trans_b: false,
                },
                &[x, w],
                "mm",
            ),
            g.add_node(Op::Add, &[x, y], "add"),
            g.add_node(Op::Div, &[x, two], "div"),
            g.add_node(Op::Div, &[x, x], "div2"),
            g.add_node(Op::Softmax { axis: 1 }, &[x], "sm"),
            g.add_node(Op::Gather { axis: 0 }, &[x, i], "gather"),
        ];
        assert!(nodes.iter().all(Result::is_ok));
        let why: Vec<String> = g
            .nodes
            .iter()
            .map(|n| refuse(&g, n).unwrap_or_default())
            .collect();
        assert_eq!(why[0], "");
        assert_eq!(why[1], "", "a run-time broadcast is a DMA expand first");
        assert_eq!(why[2], "");
        assert!(why[3].starts_with("lut-scalar:"), "{}", why[3]);
        assert!(why[4].starts_with("last-axis:"), "{}", why[4]);
        assert!(why[5].starts_with("gather-indices: run-time"), "{}", why[5]);
        assert!(CONSTRAINTS.iter().all(|c| !c.rule.is_empty()));
    }
}
