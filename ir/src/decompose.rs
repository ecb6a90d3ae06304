//! Declared decompositions of the composite operators.
//!
//! Softmax, Norm and Gelu are in the IR because accelerators run each as
//! one fused pass; a target without such a unit runs this expansion into
//! simpler IR operators instead. The expansion is the operator's
//! definition: the reference interpreter must agree with it (see the
//! `decompose` integration test).

use crate::op::NormKind;
use crate::rebuild::Rebuild;
use crate::{DType, Graph, IrError, Node, Op, Tensor, ValueId};

/// Rewrites every f32 composite node (Softmax, Norm, Gelu) into simpler IR
/// operators; other nodes are copied unchanged.
///
/// ```
/// use m4c_ir::{decompose, DType, Graph, Op, OpKind, TensorType};
/// let mut g = Graph::new("g");
/// let x = g.add_input("x", TensorType::fixed(DType::F32, &[2, 5]));
/// let y = g.add_node(Op::Softmax { axis: 1 }, &[x], "y").unwrap();
/// g.outputs.push(y);
/// let d = decompose(&g).unwrap();
/// assert!(d.nodes.iter().all(|n| !n.op.kind().is_composite()));
/// assert_eq!(d.value(d.outputs[0]).ty, g.value(y).ty);
/// ```
pub fn decompose(g: &Graph) -> Result<Graph, IrError> {
    let mut rb = Rebuild::new(g);
    rb.copy_constants();
    for node in &g.nodes {
        let ins = rb.inputs_of(node)?;
        let name = g.value(node.output).name.clone();
        let new = expand(&mut rb.out, node, &ins, &name)?;
        rb.set(node.output, new);
    }
    rb.finish()
}

fn scalar(g: &mut Graph, name: &str, v: f32) -> ValueId {
    g.add_const(format!("{name}/c{v}"), Tensor::from_f32(&[], &[v]))
}

fn expand(g: &mut Graph, node: &Node, ins: &[ValueId], name: &str) -> Result<ValueId, IrError> {
    let f32_input = g.value(ins[0]).ty.dtype == DType::F32;
    let mut k = 0;
    let mut next = |g: &mut Graph, op: Op, args: &[ValueId]| {
        k += 1;
        g.add_node(op, args, format!("{name}/{k}"))
    };
    match &node.op {
        Op::Softmax { axis } if f32_input => {
            let x = ins[0];
            let m = next(
                g,
                Op::ReduceMax {
                    axes: vec![*axis],
                    keep_dims: true,
                },
                &[x],
            )?;
            let d = next(g, Op::Sub, &[x, m])?;
            let e = next(g, Op::Exp, &[d])?;
            let s = next(
                g,
                Op::ReduceSum {
                    axes: vec![*axis],
                    keep_dims: true,
                },
                &[e],
            )?;
            g.add_node(Op::Div, &[e, s], name)
        }
        Op::Norm {
            kind,
            axis,
            epsilon,
        } if f32_input => {
            let x = ins[0];
            let shape = g
                .value(x)
                .ty
                .static_shape()
                .ok_or_else(|| IrError::ty("Norm", "needs a static shape"))?;
            let axes: Vec<usize> = (*axis..shape.len()).collect();
            let inv_n = scalar(
                g,
                name,
                1.0 / shape[*axis..].iter().product::<usize>() as f32,
            );
            let eps = scalar(g, name, *epsilon);
            let centred = if *kind == NormKind::Layer {
                let sum = next(
                    g,
                    Op::ReduceSum {
                        axes: axes.clone(),
                        keep_dims: true,
                    },
                    &[x],
                )?;
                let mean = next(g, Op::Mul, &[sum, inv_n])?;
                next(g, Op::Sub, &[x, mean])?
            } else {
                x
            };
            let sq = next(g, Op::Mul, &[centred, centred])?;
            let ssum = next(
                g,
                Op::ReduceSum {
                    axes,
                    keep_dims: true,
                },
                &[sq],
            )?;
            let var = next(g, Op::Mul, &[ssum, inv_n])?;
            let var = next(g, Op::Add, &[var, eps])?;
            let std = next(g, Op::Sqrt, &[var])?;
            let normed = next(g, Op::Div, &[centred, std])?;
            match ins.get(2) {
                Some(&bias) => {
                    let scaled = next(g, Op::Mul, &[normed, ins[1]])?;
                    g.add_node(Op::Add, &[scaled, bias], name)
                }
                None => g.add_node(Op::Mul, &[normed, ins[1]], name),
            }
        }
        Op::Gelu { tanh_approx } if f32_input => {
            let x = ins[0];
            let half = scalar(g, name, 0.5);
            let one = scalar(g, name, 1.0);
            let inner = if *tanh_approx {
                // tanh(√(2/π)·(x + 0.044715·x³))
                let c = scalar(g, name, 0.044_715);
                let k = scalar(g, name, (2.0 / std::f32::consts::PI).sqrt());
                let x2 = next(g, Op::Mul, &[x, x])?;
                let x3 = next(g, Op::Mul, &[x2, x])?;
                let cx3 = next(g, Op::Mul, &[x3, c])?;
                let sum = next(g, Op::Add, &[x, cx3])?;
                let arg = next(g, Op::Mul, &[sum, k])?;
                next(g, Op::Tanh, &[arg])?
            } else {
                // erf(x/√2)
                let r = scalar(g, name, std::f32::consts::FRAC_1_SQRT_2);
                let arg = next(g, Op::Mul, &[x, r])?;
                next(g, Op::Erf, &[arg])?
            };
            let t = next(g, Op::Add, &[inner, one])?;
            let hx = next(g, Op::Mul, &[x, half])?;
            g.add_node(Op::Mul, &[hx, t], name)
        }
        op => g.add_node(op.clone(), ins, name),
    }
}
