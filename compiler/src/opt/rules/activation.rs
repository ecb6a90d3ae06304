//! Recognition of exporter-decomposed activations:
//!
//! - GELU, exact: `x · ½ · (1 + erf(x/√2))` (or `erf(x · 1/√2)`);
//! - GELU, tanh form: `x · ½ · (1 + tanh(√(2/π) · (x + 0.044715·x³)))`
//!   with `x³` as `Pow(x, 3)` or `x·x·x` (HF's `NewGELUActivation`, the
//!   TorchScript export of `approximate="tanh"`, `m4c_ir::decompose`);
//!   both in any nesting of the three factors;
//! - sigmoid, `1 / (1 + exp(−x))`, into `Sigmoid(x)`;
//! - SiLU, `x / (1 + exp(−x))`, into `x · Sigmoid(x)`. The IR has no SiLU
//!   operator: `x · Sigmoid(x)` is its minimal form (two vector ops, one
//!   elementwise fusion group), which is what exporters emit when they do
//!   not spell the exponential out.
//!
//! `−x` is `x · −1`, as the frontend lowers Neg.

use egg::Id;
use m4c_ir::{Op, OpKind};

use super::super::lang::EG;
use super::super::rule::{approx, binary, scalar, unary, with_literal, Alt, Ref, Rewrite, Rule};

/// GELU in its exact (`tanh: false`) or tanh-approximated form.
pub struct Gelu {
    pub tanh: bool,
}

/// `1 / (1 + exp(−x))` → `Sigmoid(x)`.
pub struct Sigmoid;

/// `x / (1 + exp(−x))` → `x · Sigmoid(x)`.
pub struct Silu;

/// `x · x · x` or `Pow(x, 3)` → `x`.
fn cube_roots(eg: &EG, c: Id) -> Vec<Id> {
    let mut out = with_literal(eg, c, OpKind::Pow, 3.0);
    for (sq, x) in binary(eg, c, OpKind::Mul) {
        if binary(eg, sq, OpKind::Mul)
            .into_iter()
            .any(|(a, b)| a == x && b == x)
        {
            out.push(x);
        }
    }
    out
}

/// The `x` of `inner(x)`: `erf(x/√2)`, or `tanh(√(2/π)·(x + 0.044715·x³))`.
fn inner_args(eg: &EG, e: Id, tanh: bool) -> Vec<Id> {
    let mut out = vec![];
    if !tanh {
        for (_, t) in unary(eg, e, OpKind::Erf) {
            out.extend(with_literal(eg, t, OpKind::Div, std::f64::consts::SQRT_2));
            out.extend(with_literal(
                eg,
                t,
                OpKind::Mul,
                std::f64::consts::FRAC_1_SQRT_2,
            ));
        }
        return out;
    }
    let k = (2.0 / std::f64::consts::PI).sqrt();
    for (_, t) in unary(eg, e, OpKind::Tanh) {
        for sum in with_literal(eg, t, OpKind::Mul, k) {
            for (x, cx3) in binary(eg, sum, OpKind::Add) {
                let cubes = with_literal(eg, cx3, OpKind::Mul, 0.044_715);
                if cubes.iter().any(|&c| cube_roots(eg, c).contains(&x)) {
                    out.push(x);
                }
            }
        }
    }
    out
}

impl Rule for Gelu {
    fn name(&self) -> &'static str {
        if self.tanh {
            "recognise-gelu-tanh"
        } else {
            "recognise-gelu"
        }
    }

    fn rewrites(&self, eg: &EG, class: Id) -> Vec<Rewrite> {
        let mut out = vec![];
        // The three factors x, ½ and (1 + inner(x)) in either nesting.
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
                    if !approx(scalar(eg, half), 0.5) {
                        continue;
                    }
                    let found = with_literal(eg, h, OpKind::Add, 1.0)
                        .into_iter()
                        .any(|e| inner_args(eg, e, self.tanh).contains(&x));
                    if found {
                        let mut alt = Alt::build();
                        let op = Op::Gelu {
                            tanh_approx: self.tanh,
                        };
                        alt.push(op, vec![Ref::Class(x)]);
                        out.push(Rewrite { target: class, alt });
                    }
                }
            }
        }
        out
    }
}

/// `(p, x)` pairs for which `class` is `p / (1 + exp(−x))`.
fn over_one_plus_exp_neg(eg: &EG, class: Id) -> Vec<(Id, Id)> {
    let mut out = vec![];
    for (p, d) in binary(eg, class, OpKind::Div) {
        for e in with_literal(eg, d, OpKind::Add, 1.0) {
            for (_, n) in unary(eg, e, OpKind::Exp) {
                out.extend(
                    with_literal(eg, n, OpKind::Mul, -1.0)
                        .into_iter()
                        .map(|x| (p, x)),
                );
            }
        }
    }
    out
}

impl Rule for Sigmoid {
    fn name(&self) -> &'static str {
        "recognise-sigmoid"
    }

    fn rewrites(&self, eg: &EG, class: Id) -> Vec<Rewrite> {
        over_one_plus_exp_neg(eg, class)
            .into_iter()
            .filter(|&(p, _)| approx(scalar(eg, p), 1.0))
            .map(|(_, x)| {
                let mut alt = Alt::build();
                alt.push(Op::Sigmoid, vec![Ref::Class(x)]);
                Rewrite { target: class, alt }
            })
            .collect()
    }
}

impl Rule for Silu {
    fn name(&self) -> &'static str {
        "recognise-silu"
    }

    fn rewrites(&self, eg: &EG, class: Id) -> Vec<Rewrite> {
        over_one_plus_exp_neg(eg, class)
            .into_iter()
            .filter(|&(p, x)| p == x)
            .map(|(_, x)| {
                let mut alt = Alt::build();
                let s = alt.push(Op::Sigmoid, vec![Ref::Class(x)]);
                alt.push(Op::Mul, vec![Ref::Class(x), s]);
                Rewrite { target: class, alt }
            })
            .collect()
    }
}
