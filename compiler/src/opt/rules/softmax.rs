//! Recognition of an exporter-decomposed softmax:
//! `exp(x − max(x)) / sum(exp(x − max(x)))` over one axis (keep-dims
//! reductions; division or multiplication by the reciprocal), and the
//! variant without the max subtraction, `exp(x) / sum(exp(x))`. Both are
//! `Softmax(x)`: softmax is shift-invariant, and the IR's Softmax subtracts
//! the maximum itself, so the recognised form never overflows where the
//! variant would.

use egg::Id;
use m4c_ir::{Op, OpKind};

use super::super::lang::EG;
use super::super::rule::{approx, binary, scalar, unary, Alt, Ref, Rewrite, Rule};

/// The softmax recognition rule.
pub struct Softmax;

/// The single axis of a keep-dims reduction.
fn one_axis(op: &Op) -> Option<usize> {
    match op {
        Op::ReduceSum {
            axes,
            keep_dims: true,
        }
        | Op::ReduceMax {
            axes,
            keep_dims: true,
        } if axes.len() == 1 => Some(axes[0]),
        _ => None,
    }
}

/// `(e, s)` pairs for which `class` is `e / s` or `e · (1/s)`.
fn quotients(eg: &EG, class: Id) -> Vec<(Id, Id)> {
    let mut out = binary(eg, class, OpKind::Div);
    for (e, inv) in binary(eg, class, OpKind::Mul) {
        for (one, s) in binary(eg, inv, OpKind::Div) {
            if approx(scalar(eg, one), 1.0) {
                out.push((e, s));
            }
        }
    }
    out
}

impl Rule for Softmax {
    fn name(&self) -> &'static str {
        "recognise-softmax"
    }

    fn rewrites(&self, eg: &EG, class: Id) -> Vec<Rewrite> {
        let mut out = vec![];
        for (e, s) in quotients(eg, class) {
            let sum_axes = unary(eg, s, OpKind::ReduceSum)
                .into_iter()
                .filter(|(_, v)| *v == e)
                .filter_map(|(op, _)| one_axis(&op));
            for axis in sum_axes {
                for (_, d) in unary(eg, e, OpKind::Exp) {
                    // exp(x)/sum(exp(x)), and x − max(x) when d is that.
                    let mut xs = vec![d];
                    for (x, m) in binary(eg, d, OpKind::Sub) {
                        let is_max = unary(eg, m, OpKind::ReduceMax)
                            .into_iter()
                            .any(|(op, v)| v == x && one_axis(&op) == Some(axis));
                        if is_max {
                            xs.push(x);
                        }
                    }
                    for x in xs {
                        let mut alt = Alt::build();
                        alt.push(Op::Softmax { axis }, vec![Ref::Class(x)]);
                        out.push(Rewrite { target: class, alt });
                    }
                }
            }
        }
        out
    }
}
