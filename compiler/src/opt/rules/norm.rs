//! Recognition of exporter-decomposed normalisations back into the IR's
//! `Norm`:
//!
//! - RMSNorm: `w · x / √(mean(x²) + ε)` (LLaMA writes `x · 1/√…`);
//! - LayerNorm: `w · c / √(mean(c²) + ε)` with `c = x − mean(x)` (the
//!   TorchScript export below opset 17, and `m4c_ir::decompose`), then
//!   `+ b` folded in as the bias by [`NormBias`].
//!
//! Each `mean` is over the trailing axes from some `axis`, keep-dims, as
//! `ReduceSum · 1/n` (how the frontend lowers ReduceMean) or `ReduceSum / n`;
//! each square is `Pow(c, 2)` or `c · c`; each `1/√z` is `Div(1, Sqrt(z))`
//! (how Reciprocal lowers) or the division `c / √z` itself.

use egg::Id;
use m4c_ir::op::NormKind;
use m4c_ir::{Dim, Op, OpKind};

use super::super::lang::{ENode, EG};
use super::super::rule::{approx, binary, scalar, unary, with_literal, Alt, Ref, Rewrite, Rule};

/// RMSNorm over trailing axes.
pub struct RmsNorm;

/// LayerNorm (scale only) over trailing axes.
pub struct LayerNorm;

/// `Norm{Layer}(x, w) + b → Norm{Layer}(x, w, b)`.
pub struct NormBias;

/// The fixed trailing dimensions of `id` from `axis`, or `None` when one is
/// symbolic.
fn trailing(eg: &EG, id: Id, axis: usize) -> Option<Vec<usize>> {
    eg[id].data.ty.dims[axis.min(eg[id].data.ty.rank())..]
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => Some(*n),
            Dim::Sym(_) => None,
        })
        .collect()
}

/// The `(v, axis)` pairs for which class `m` is `mean(v)` over the trailing
/// axes from `axis`, keep-dims.
pub fn means(eg: &EG, m: Id) -> Vec<(Id, usize)> {
    let by_mul = binary(eg, m, OpKind::Mul)
        .into_iter()
        .filter_map(|(s, k)| scalar(eg, k).filter(|k| *k != 0.0).map(|k| (s, 1.0 / k)));
    let by_div = binary(eg, m, OpKind::Div)
        .into_iter()
        .filter_map(|(s, k)| scalar(eg, k).map(|k| (s, k)));
    let mut out = vec![];
    for (s, n) in by_mul.chain(by_div) {
        for (op, v) in unary(eg, s, OpKind::ReduceSum) {
            let Op::ReduceSum {
                axes,
                keep_dims: true,
            } = op
            else {
                continue;
            };
            let rank = eg[v].data.ty.rank();
            let Some(&axis) = axes.first() else { continue };
            if !axes.iter().copied().eq(axis..rank) {
                continue;
            }
            let count = trailing(eg, v, axis).map(|d| d.iter().product::<usize>() as f64);
            if count.is_some_and(|c| approx(Some(n), c)) {
                out.push((v, axis));
            }
        }
    }
    out
}

/// `(c, z)` pairs for which `y` is `c / √z` or `c · (1/√z)`.
fn normalised(eg: &EG, y: Id) -> Vec<(Id, Id)> {
    let mut out = vec![];
    for (c, s) in binary(eg, y, OpKind::Div) {
        out.extend(unary(eg, s, OpKind::Sqrt).into_iter().map(|(_, z)| (c, z)));
    }
    for (c, inv) in binary(eg, y, OpKind::Mul) {
        for (one, s) in binary(eg, inv, OpKind::Div) {
            if approx(scalar(eg, one), 1.0) {
                out.extend(unary(eg, s, OpKind::Sqrt).into_iter().map(|(_, z)| (c, z)));
            }
        }
    }
    out
}

/// `(axis, ε)` when `z` is `mean(c²) + ε`.
fn variance_plus_eps(eg: &EG, z: Id, c: Id) -> Option<(usize, f64)> {
    for (m, eps) in binary(eg, z, OpKind::Add) {
        let Some(eps) = scalar(eg, eps) else { continue };
        for (sq, axis) in means(eg, m) {
            let pow = with_literal(eg, sq, OpKind::Pow, 2.0).contains(&c);
            let mul = binary(eg, sq, OpKind::Mul)
                .into_iter()
                .any(|(a, b)| a == c && b == c);
            if pow || mul {
                return Some((axis, eps));
            }
        }
    }
    None
}

/// The inputs `x` for which `c` is `x − mean(x)` over the trailing axes
/// from `axis`.
fn centred(eg: &EG, c: Id, axis: usize) -> Vec<Id> {
    binary(eg, c, OpKind::Sub)
        .into_iter()
        .filter(|&(x, m)| means(eg, m).contains(&(x, axis)))
        .map(|(x, _)| x)
        .collect()
}

/// Every `Norm(x, w)` of `kind` that `class` (a product `w · normalised`)
/// computes.
fn norms(eg: &EG, class: Id, kind: NormKind) -> Vec<Rewrite> {
    let mut out = vec![];
    for (w, y) in binary(eg, class, OpKind::Mul) {
        for (c, z) in normalised(eg, y) {
            let Some((axis, eps)) = variance_plus_eps(eg, z, c) else {
                continue;
            };
            let xs = match kind {
                NormKind::Rms => vec![c],
                NormKind::Layer => centred(eg, c, axis),
            };
            for x in xs {
                // The scale must cover exactly the normalised axes, so that
                // the product broadcasts as Norm's scale does.
                let fits = trailing(eg, x, axis)
                    .is_some_and(|d| Some(d) == trailing(eg, w, 0) && eg[w].data.ty.rank() > 0);
                if !fits {
                    continue;
                }
                let mut alt = Alt::build();
                let op = Op::Norm {
                    kind,
                    axis,
                    epsilon: eps as f32,
                };
                alt.push(op, vec![Ref::Class(x), Ref::Class(w)]);
                out.push(Rewrite { target: class, alt });
            }
        }
    }
    out
}

impl Rule for RmsNorm {
    fn name(&self) -> &'static str {
        "recognise-rmsnorm"
    }

    fn rewrites(&self, eg: &EG, class: Id) -> Vec<Rewrite> {
        norms(eg, class, NormKind::Rms)
    }
}

impl Rule for LayerNorm {
    fn name(&self) -> &'static str {
        "recognise-layernorm"
    }

    fn rewrites(&self, eg: &EG, class: Id) -> Vec<Rewrite> {
        norms(eg, class, NormKind::Layer)
    }
}

impl Rule for NormBias {
    fn name(&self) -> &'static str {
        "norm-bias"
    }

    fn rewrites(&self, eg: &EG, class: Id) -> Vec<Rewrite> {
        let mut out = vec![];
        for (n, b) in binary(eg, class, OpKind::Add) {
            for node in &eg[n].nodes {
                let ENode::Op(k, c) = node else {
                    continue;
                };
                let Op::Norm {
                    kind: NormKind::Layer,
                    ..
                } = k.op
                else {
                    continue;
                };
                if c.len() != 2 {
                    continue;
                }
                let w = eg.find(c[1]);
                if eg[b].data.ty.dims != eg[w].data.ty.dims {
                    continue;
                }
                let mut alt = Alt::build();
                let inputs = vec![Ref::Class(eg.find(c[0])), Ref::Class(w), Ref::Class(b)];
                alt.push(k.op.clone(), inputs);
                out.push(Rewrite { target: class, alt });
            }
        }
        out
    }
}
