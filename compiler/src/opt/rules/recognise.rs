//! Recognition of exporter-decomposed composites back into the IR's
//! composite operators: RMSNorm (`x · 1/√(mean(x²)+ε) · w`, as LLaMA
//! exports it) and exact GELU (`x · ½ · (1 + erf(x/√2))`, in the operand
//! nestings TorchScript and dynamo produce).
//!
//! LayerNorm and Softmax need no rule on the shipped exporters: both are
//! exported as single ONNX ops (LayerNormalization, Softmax) which the
//! frontend lowers straight to `Norm`/`Softmax`.

use egg::Id;
use m4c_ir::op::NormKind;
use m4c_ir::{Op, OpKind};

use super::super::lang::{shape_of, EG};
use super::super::rule::{approx, binary, scalar, unary, Alt, Ref, Rewrite, Rule};

/// RMSNorm over the last axis.
pub struct RmsNorm;

/// Exact (erf) GELU.
pub struct GeluErf;

/// `1/√z` as `Div(1, Sqrt(z))`: the classes `z`.
fn rsqrt_args(eg: &EG, class: Id) -> Vec<Id> {
    binary(eg, class, OpKind::Div)
        .into_iter()
        .filter(|&(one, _)| approx(scalar(eg, one), 1.0))
        .flat_map(|(_, s)| unary(eg, s, OpKind::Sqrt))
        .map(|(_, z)| z)
        .collect()
}

/// `mean(x², last axis) + ε` → ε, when `z` computes it for this `x`.
fn mean_square_plus_eps(eg: &EG, z: Id, x: Id) -> Option<f64> {
    let x_shape = shape_of(eg, x);
    let last = x_shape.len().checked_sub(1)?;
    let n = x_shape[last] as f64;
    for (mean, eps) in binary(eg, z, OpKind::Add) {
        let Some(eps) = scalar(eg, eps) else { continue };
        let sums = binary(eg, mean, OpKind::Mul)
            .into_iter()
            .filter(|&(_, k)| approx(scalar(eg, k), 1.0 / n))
            .chain(
                binary(eg, mean, OpKind::Div)
                    .into_iter()
                    .filter(|&(_, k)| approx(scalar(eg, k), n)),
            )
            .map(|(s, _)| s);
        for s in sums {
            for (op, sq) in unary(eg, s, OpKind::ReduceSum) {
                let Op::ReduceSum {
                    axes,
                    keep_dims: true,
                } = op
                else {
                    continue;
                };
                if axes != [last] {
                    continue;
                }
                let pow = binary(eg, sq, OpKind::Pow)
                    .into_iter()
                    .any(|(b, e)| b == x && approx(scalar(eg, e), 2.0));
                let mul = binary(eg, sq, OpKind::Mul)
                    .into_iter()
                    .any(|(a, b)| a == x && b == x);
                if pow || mul {
                    return Some(eps);
                }
            }
        }
    }
    None
}

impl Rule for RmsNorm {
    fn name(&self) -> &'static str {
        "recognise-rmsnorm"
    }

    fn rewrites(&self, eg: &EG, class: Id) -> Vec<Rewrite> {
        let mut out = vec![];
        for (w, y) in binary(eg, class, OpKind::Mul) {
            let w_shape = shape_of(eg, w);
            if !eg[w].data.constness.is_const() || w_shape.len() != 1 {
                continue;
            }
            let mut normed: Vec<(Id, Id)> = binary(eg, y, OpKind::Mul)
                .into_iter()
                .flat_map(|(x, inv)| rsqrt_args(eg, inv).into_iter().map(move |z| (x, z)))
                .collect();
            for (x, s) in binary(eg, y, OpKind::Div) {
                normed.extend(unary(eg, s, OpKind::Sqrt).into_iter().map(|(_, z)| (x, z)));
            }
            for (x, z) in normed {
                let x_shape = shape_of(eg, x);
                if x_shape.last() != Some(&w_shape[0]) {
                    continue;
                }
                if let Some(eps) = mean_square_plus_eps(eg, z, x) {
                    let mut alt = Alt::build();
                    let op = Op::Norm {
                        kind: NormKind::Rms,
                        axis: x_shape.len() - 1,
                        epsilon: eps as f32,
                    };
                    alt.push(op, vec![Ref::Class(x), Ref::Class(w)]);
                    out.push(Rewrite { target: class, alt });
                }
            }
        }
        out
    }
}

/// `1 + erf(x/√2)` → `x`.
fn one_plus_erf_arg(eg: &EG, h: Id) -> Vec<Id> {
    let mut out = vec![];
    for (e, one) in binary(eg, h, OpKind::Add) {
        if !approx(scalar(eg, one), 1.0) {
            continue;
        }
        for (_, t) in unary(eg, e, OpKind::Erf) {
            for (x, k) in binary(eg, t, OpKind::Div) {
                if approx(scalar(eg, k), std::f64::consts::SQRT_2) {
                    out.push(x);
                }
            }
            for (x, k) in binary(eg, t, OpKind::Mul) {
                if approx(scalar(eg, k), std::f64::consts::FRAC_1_SQRT_2) {
                    out.push(x);
                }
            }
        }
    }
    out
}

impl Rule for GeluErf {
    fn name(&self) -> &'static str {
        "recognise-gelu"
    }

    fn rewrites(&self, eg: &EG, class: Id) -> Vec<Rewrite> {
        let mut out = vec![];
        // The three factors x, ½ and (1 + erf(x/√2)) in either nesting.
        for (p, q) in binary(eg, class, OpKind::Mul) {
            for (r, s) in binary(eg, q, OpKind::Mul) {
                for [x, half, h] in [
                    [p, r, s],
                    [r, p, s],
                    [p, s, r],
                    [s, p, r],
                    [r, s, p],
                    [s, r, p],
                ] {
                    if approx(scalar(eg, half), 0.5) && one_plus_erf_arg(eg, h).contains(&x) {
                        let mut alt = Alt::build();
                        alt.push(Op::Gelu { tanh_approx: false }, vec![Ref::Class(x)]);
                        out.push(Rewrite { target: class, alt });
                    }
                }
            }
        }
        out
    }
}
