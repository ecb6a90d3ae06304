//! LoRA fold: `x·W + s·((x·A)·B) ⇔ x·(W + s·(A·B))`, only when `W`, `A`
//! and `B` are compile-time constants with fitting 2-D shapes; on a biased
//! Linear, `(x·W + b) + s·((x·A)·B) ⇔ x·(W + s·(A·B)) + b` (the branch on
//! either side of the outer Add).
//!
//! The branch is recognised in the forms exporters and the adapter
//! ingestion produce: the scale after `B` (`Mul(B-product, s)` either
//! order), between the factors (`(s·(x·A))·B`), or absent (`s = 1`); each
//! weight may be stored transposed (`trans_b`, as PEFT's `[r, in]` /
//! `[out, r]` factors are attached).

use egg::Id;
use m4c_ir::{Op, OpKind};

use super::super::lang::{shape_of, EG};
use super::super::rule::{binary, ops_in, scalar, Alt, Ref, Rewrite, Rule};

/// The LoRA fold rule.
pub struct LoraFold;

/// Operands and `trans_b` of the MatMuls of a class whose left operand is
/// not transposed.
pub fn matmuls(eg: &EG, class: Id) -> Vec<(Id, Id, bool)> {
    ops_in(eg, class)
        .filter_map(|(op, c)| match op {
            Op::MatMul {
                trans_a: false,
                trans_b,
            } => Some((eg.find(c[0]), eg.find(c[1]), *trans_b)),
            _ => None,
        })
        .collect()
}

/// A LoRA branch on input `x`: factors (each possibly stored transposed)
/// and the scale's e-class (if any).
#[derive(Clone, Copy, Debug)]
pub struct Branch {
    pub a: Id,
    pub trans_a: bool,
    pub b: Id,
    pub trans_b: bool,
    pub scale: Option<Id>,
}

/// `(x·A)·B`, possibly with a scalar factor between the products.
fn product_branches(eg: &EG, class: Id, x: Id) -> Vec<Branch> {
    let mut out = vec![];
    for (t, b, trans_b) in matmuls(eg, class) {
        let mut firsts: Vec<(Id, Option<Id>)> = vec![(t, None)];
        for (u, s) in binary(eg, t, OpKind::Mul) {
            if scalar(eg, s).is_some() {
                firsts.push((u, Some(s)));
            }
        }
        for (u, scale) in firsts {
            for (x2, a, trans_a) in matmuls(eg, u) {
                if x2 == x {
                    out.push(Branch {
                        a,
                        trans_a,
                        b,
                        trans_b,
                        scale,
                    });
                }
            }
        }
    }
    out
}

/// Every LoRA branch on `x` that e-class `q` computes.
pub fn branches(eg: &EG, q: Id, x: Id) -> Vec<Branch> {
    let mut out = product_branches(eg, q, x);
    for (r, s) in binary(eg, q, OpKind::Mul) {
        if scalar(eg, s).is_some() {
            for br in product_branches(eg, r, x) {
                if br.scale.is_none() {
                    out.push(Branch {
                        scale: Some(s),
                        ..br
                    });
                }
            }
        }
    }
    out
}

/// The `[rows, cols]` a 2-D weight has as a right operand.
fn effective(eg: &EG, id: Id, transposed: bool) -> Option<[usize; 2]> {
    match shape_of(eg, id)[..] {
        [r, c] if transposed => Some([c, r]),
        [r, c] => Some([r, c]),
        _ => None,
    }
}

/// Shape guard: `W [k,n]`, `A [k,r]`, `B [r,n]` (as used), all constant.
fn fits(eg: &EG, w: Id, trans_w: bool, br: &Branch) -> bool {
    let konst = |i: Id| eg[i].data.constness.is_const();
    let shapes = (
        effective(eg, w, trans_w),
        effective(eg, br.a, br.trans_a),
        effective(eg, br.b, br.trans_b),
    );
    let (Some(ws), Some(as_), Some(bs)) = shapes else {
        return false;
    };
    konst(w) && konst(br.a) && konst(br.b) && as_[0] == ws[0] && bs[1] == ws[1] && as_[1] == bs[0]
}

impl Rule for LoraFold {
    fn name(&self) -> &'static str {
        "lora-fold"
    }

    fn rewrites(&self, eg: &EG, class: Id) -> Vec<Rewrite> {
        let mut out = vec![];
        for (p, q) in binary(eg, class, OpKind::Add) {
            for (base, bias) in biased(eg, p) {
                out.extend(folds(eg, class, base, bias, q));
            }
        }
        out
    }
}

/// The bases `p` may be: itself (no bias), or `base + bias` with a constant
/// `bias` (a biased Linear, `Add(Add(x·W, b), branch)`).
pub fn biased(eg: &EG, p: Id) -> Vec<(Id, Option<Id>)> {
    let mut out = vec![(p, None)];
    for (base, bias) in binary(eg, p, OpKind::Add) {
        if eg[bias].data.constness.is_const() && !matmuls(eg, base).is_empty() {
            out.push((base, Some(bias)));
        }
    }
    out
}

/// The folds of `class = base (+ bias) + q` where `base` is a MatMul and `q`
/// a LoRA branch on its input.
fn folds(eg: &EG, class: Id, p: Id, bias: Option<Id>, q: Id) -> Vec<Rewrite> {
    let mut out = vec![];
    for (x, w, trans_w) in matmuls(eg, p) {
        for br in branches(eg, q, x) {
            if !fits(eg, w, trans_w, &br) {
                continue;
            }
            let mut alt = Alt::build();
            // ΔW = op(A)·op(B), or its transpose op(B)ᵀ·op(A)ᵀ when
            // W is stored transposed.
            let delta_op = |ta, tb| Op::MatMul {
                trans_a: ta,
                trans_b: tb,
            };
            let mut delta = if trans_w {
                let op = delta_op(!br.trans_b, !br.trans_a);
                alt.push(op, vec![Ref::Class(br.b), Ref::Class(br.a)])
            } else {
                let op = delta_op(br.trans_a, br.trans_b);
                alt.push(op, vec![Ref::Class(br.a), Ref::Class(br.b)])
            };
            if let Some(s) = br.scale {
                delta = alt.push(Op::Mul, vec![delta, Ref::Class(s)]);
            }
            let folded = alt.push(Op::Add, vec![Ref::Class(w), delta]);
            let y = alt.push(delta_op(false, trans_w), vec![Ref::Class(x), folded]);
            if let Some(b) = bias {
                alt.push(Op::Add, vec![y, Ref::Class(b)]);
            }
            out.push(Rewrite { target: class, alt });
        }
    }
    out
}
