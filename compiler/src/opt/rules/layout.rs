//! Layout canonicalisation: transposes folded into a MatMul's operand
//! flags, transpose∘transpose composed (or cancelled), reshape∘reshape
//! composed, identity reshapes/transposes removed.

use egg::Id;
use m4c_ir::{Op, OpKind};

use super::super::lang::{shape_of, EG};
use super::super::rule::{ops_in, unary, Alt, Ref, Rewrite, Rule};

/// `MatMul(a, Transpose_p(y))` → `MatMul{flag flipped}(a, Transpose_p'(y))`
/// where `p'` is `p` with its last two entries swapped (and no transpose
/// at all when `p'` is the identity); the same for the left operand.
pub struct TransposeIntoMatMul;

/// `Transpose_p(Transpose_q(x))` → `Transpose_{q∘p}(x)`, or `x`.
pub struct ComposeTransposes;

/// `Reshape(Reshape(x))` → `Reshape(x)`; a reshape or transpose that
/// changes nothing → its input.
pub struct ComposeReshapes;

fn is_identity(perm: &[usize]) -> bool {
    perm.iter().enumerate().all(|(i, &p)| i == p)
}

/// The operand `y` with perm `p'` for each transpose in `class` (rank ≥ 2).
fn swapped_transposes(eg: &EG, class: Id) -> Vec<(Vec<usize>, Id)> {
    unary(eg, class, OpKind::Transpose)
        .into_iter()
        .filter_map(|(op, y)| match op {
            Op::Transpose { mut perm } if perm.len() >= 2 => {
                let r = perm.len();
                perm.swap(r - 2, r - 1);
                Some((perm, y))
            }
            _ => None,
        })
        .collect()
}

fn operand(alt: &mut Alt, perm: Vec<usize>, y: Id) -> Ref {
    if is_identity(&perm) {
        Ref::Class(y)
    } else {
        alt.push(Op::Transpose { perm }, vec![Ref::Class(y)])
    }
}

impl Rule for TransposeIntoMatMul {
    fn name(&self) -> &'static str {
        "transpose-into-matmul"
    }

    fn rewrites(&self, eg: &EG, class: Id) -> Vec<Rewrite> {
        let mut out = vec![];
        for (op, c) in ops_in(eg, class) {
            let Op::MatMul { trans_a, trans_b } = *op else {
                continue;
            };
            let (a, b) = (eg.find(c[0]), eg.find(c[1]));
            for (perm, y) in swapped_transposes(eg, b) {
                let mut alt = Alt::build();
                let rhs = operand(&mut alt, perm, y);
                let trans_b = !trans_b;
                alt.push(Op::MatMul { trans_a, trans_b }, vec![Ref::Class(a), rhs]);
                out.push(Rewrite { target: class, alt });
            }
            for (perm, y) in swapped_transposes(eg, a) {
                let mut alt = Alt::build();
                let lhs = operand(&mut alt, perm, y);
                let trans_a = !trans_a;
                alt.push(Op::MatMul { trans_a, trans_b }, vec![lhs, Ref::Class(b)]);
                out.push(Rewrite { target: class, alt });
            }
        }
        out
    }
}

impl Rule for ComposeTransposes {
    fn name(&self) -> &'static str {
        "compose-transposes"
    }

    fn rewrites(&self, eg: &EG, class: Id) -> Vec<Rewrite> {
        let mut out = vec![];
        for (outer, y) in unary(eg, class, OpKind::Transpose) {
            let Op::Transpose { perm: p } = outer else {
                continue;
            };
            if is_identity(&p) {
                out.push(Rewrite {
                    target: class,
                    alt: Alt::class(y),
                });
                continue;
            }
            for (inner, x) in unary(eg, y, OpKind::Transpose) {
                let Op::Transpose { perm: q } = inner else {
                    continue;
                };
                let r: Vec<usize> = p.iter().map(|&i| q[i]).collect();
                let mut alt = Alt::build();
                let root = operand(&mut alt, r, x);
                let alt = match root {
                    Ref::Class(x) => Alt::class(x),
                    Ref::New(_) => alt,
                };
                out.push(Rewrite { target: class, alt });
            }
        }
        out
    }
}

impl Rule for ComposeReshapes {
    fn name(&self) -> &'static str {
        "compose-reshapes"
    }

    fn rewrites(&self, eg: &EG, class: Id) -> Vec<Rewrite> {
        let mut out = vec![];
        let target_shape = shape_of(eg, class);
        for (_, y) in unary(eg, class, OpKind::Reshape) {
            if shape_of(eg, y) == target_shape && eg[y].data.ty.dtype == eg[class].data.ty.dtype {
                out.push(Rewrite {
                    target: class,
                    alt: Alt::class(y),
                });
                continue;
            }
            for (_, x) in unary(eg, y, OpKind::Reshape) {
                let mut alt = Alt::build();
                alt.push(
                    Op::Reshape {
                        shape: target_shape.clone(),
                    },
                    vec![Ref::Class(x)],
                );
                out.push(Rewrite { target: class, alt });
            }
        }
        out
    }
}
