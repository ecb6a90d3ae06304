//! Horizontal fusion: MatMuls that share their input and have constant
//! weights of the same kind become one MatMul on the concatenated weights,
//! each original result a slice of it (Q/K/V, gate/up, the A factors of
//! several adapters). Dequantised int8/int4 weights are left alone: they
//! stay quantised constants for the integer kernels.
//!
//! Backbone weights and adapter-only factors are grouped separately, so
//! that fusing never turns shared backbone bytes into a per-adapter copy
//! by itself (the cost model charges that when it happens through a
//! folded weight).

use std::collections::BTreeMap;

use egg::Id;
use m4c_ir::op::SliceAxis;
use m4c_ir::{Op, OpKind};

use super::super::lang::{shape_of, Constness, EG};
use super::super::rule::{ops_in, Alt, Ref, Rewrite, Rule};

/// The horizontal MatMul fusion rule (matched on the shared input).
pub struct HorizontalMatMul;

/// One MatMul on the shared input: its e-class, weight and width.
struct Member {
    class: Id,
    weight: Id,
    width: usize,
}

/// Group key: weight layout, reduction size, element type, and whether
/// the weight is adapter-only.
type Key = (bool, usize, m4c_ir::DType, bool);

fn groups(eg: &EG, x: Id) -> BTreeMap<Key, Vec<Member>> {
    let mut seen = std::collections::HashSet::new();
    let mut out: BTreeMap<Key, Vec<Member>> = BTreeMap::new();
    let mut parents: Vec<Id> = eg[x].parents().map(|p| eg.find(p)).collect();
    parents.sort();
    parents.dedup();
    for class in parents {
        for (op, c) in ops_in(eg, class) {
            let Op::MatMul {
                trans_a: false,
                trans_b,
            } = *op
            else {
                continue;
            };
            let (lhs, w) = (eg.find(c[0]), eg.find(c[1]));
            let konst = eg[w].data.constness;
            let ws = shape_of(eg, w);
            let concatenated = ops_in(eg, w).any(|(op, _)| op.kind() == OpKind::Concat);
            if lhs != x
                || !konst.is_const()
                || ws.len() != 2
                || concatenated
                || from_quantised(eg, w, DEQUANT_DEPTH)
                || !seen.insert(class)
            {
                continue;
            }
            let (k, width) = if trans_b {
                (ws[1], ws[0])
            } else {
                (ws[0], ws[1])
            };
            let key = (trans_b, k, eg[w].data.ty.dtype, konst == Constness::Adapter);
            out.entry(key).or_default().push(Member {
                class,
                weight: w,
                width,
            });
        }
    }
    out
}

/// How far below a weight [`from_quantised`] looks: `DequantizeLinear` is
/// imported as `Mul(Sub(Cast(q), zero point), scale)`, three levels.
const DEQUANT_DEPTH: usize = 3;

/// True when the weight `w` is computed from a quantised weight (int8 or
/// int4 data, within `depth` operators). Such a weight is never folded
/// (the compiler keeps it quantised), so concatenating it with others
/// would make the fused MatMul dequantise and concatenate the weights on
/// every run, and its B would no longer be the quantised constant the
/// backends' integer kernels take.
fn from_quantised(eg: &EG, w: Id, depth: usize) -> bool {
    let ty = &eg[w].data.ty;
    if ty.dtype.is_quantised() && m4c_ir::op::elements(ty) >= m4c_ir::op::QUANTISED_WEIGHT_MIN {
        return true;
    }
    depth > 0
        && ops_in(eg, w).any(|(_, children)| {
            children
                .iter()
                .any(|&c| from_quantised(eg, eg.find(c), depth - 1))
        })
}

impl Rule for HorizontalMatMul {
    fn name(&self) -> &'static str {
        "fuse-horizontal-matmul"
    }

    fn rewrites(&self, eg: &EG, x: Id) -> Vec<Rewrite> {
        let mut out = vec![];
        for ((trans_b, _, _, _), members) in groups(eg, x) {
            if members.len() < 2 {
                continue;
            }
            let out_shape = shape_of(eg, members[0].class);
            let weights: Vec<Ref> = members.iter().map(|m| Ref::Class(m.weight)).collect();
            let mut offset = 0;
            for m in &members {
                let mut alt = Alt::build();
                let cat = alt.push(
                    Op::Concat {
                        axis: usize::from(!trans_b),
                    },
                    weights.clone(),
                );
                let fused = alt.push(
                    Op::MatMul {
                        trans_a: false,
                        trans_b,
                    },
                    vec![Ref::Class(x), cat],
                );
                let last = out_shape.len() - 1;
                let axes = out_shape
                    .iter()
                    .enumerate()
                    .map(|(i, &d)| SliceAxis {
                        start: if i == last { offset } else { 0 },
                        step: 1,
                        len: if i == last { m.width } else { d },
                    })
                    .collect();
                alt.push(Op::Slice { axes }, vec![fused]);
                offset += m.width;
                out.push(Rewrite {
                    target: m.class,
                    alt,
                });
            }
        }
        out
    }
}
