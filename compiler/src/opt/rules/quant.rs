//! Requantising a dequantised value: `Quantize(L(DQ(q)), s, z)` → `L(q)`,
//! where `DQ(q)` is the importer's `DequantizeLinear`, `(Cast(q) − z')·s'`
//! (or `Cast(q)·s'` for a zero point of 0), with the same scale and zero
//! point as the `Quantize` and q of its type, and `L` a chain of Reshape
//! and Transpose (data movement, which commutes with per-tensor
//! quantisation).
//!
//! onnxruntime's QDQ models wrap every Reshape and Transpose between two
//! quantised operators in such a pair, with the scale of the tensor they
//! move; without this rule each pair is a float pass over the tensor
//! (ViT-B: a third of the quantised model's time on m4c). Exact: the
//! dequantised `(q − z)·s` rounds once, dividing by s again is within a
//! relative 2⁻²² of `q − z`, an integer of magnitude ≤ 255, so rounding
//! gives `q − z` back, and `q` is in the type's range.

use egg::Id;
use m4c_ir::{DType, Op, OpKind};

use super::super::lang::EG;
use super::super::rule::{binary, ops_in, scalar, unary, Alt, Ref, Rewrite, Rule};

/// The rule (see the module documentation).
pub struct RequantiseDequantised;

/// `Quantize(L(x), s, z)` → `L(Quantize(x, s, z))` for one scale and zero
/// point and `L` a chain of Reshape and Transpose: the data movement then
/// moves int8 bytes instead of f32 words, and the `Quantize` meets the op
/// that computes x (a quantised GEMM's epilogue quantises its output
/// itself). m4c's and onnxruntime's QDQ transformers quantise Q, K and V
/// after the head split's Reshape → Transpose. Exact: per-tensor
/// quantisation is elementwise.
pub struct QuantiseBeforeMoving;

impl Rule for QuantiseBeforeMoving {
    fn name(&self) -> &'static str {
        "quantise-before-moving"
    }

    fn rewrites(&self, eg: &EG, class: Id) -> Vec<Rewrite> {
        let mut out = vec![];
        for (op, c) in ops_in(eg, class) {
            let (Op::Quantize { to }, [x, s, z]) = (op, c) else {
                continue;
            };
            let (s, z) = (eg.find(*s), eg.find(*z));
            if scalar(eg, s).is_none() || scalar(eg, z).is_none() {
                continue;
            }
            // Through the whole chain only: a Quantize left between two
            // moves would still meet no op that computes.
            let chains = moved_from(eg, eg.find(*x), MAX_MOVES);
            let longest = chains.iter().map(|(m, _)| m.len()).max().unwrap_or(0);
            for (moves, x) in chains {
                if moves.is_empty() || moves.len() < longest {
                    continue;
                }
                let mut alt = Alt::build();
                let mut at = alt.push(
                    Op::Quantize { to: *to },
                    vec![Ref::Class(x), Ref::Class(s), Ref::Class(z)],
                );
                for op in moves.iter().rev() {
                    at = alt.push(op.clone(), vec![at]);
                }
                out.push(Rewrite { target: class, alt });
            }
        }
        out
    }
}

/// How many Reshape/Transpose nodes may lie between the pair.
const MAX_MOVES: usize = 4;

/// Each `(moves, x)` below `class` through at most `depth` Reshape or
/// Transpose nodes (outermost first), `class` itself included.
fn moved_from(eg: &EG, class: Id, depth: usize) -> Vec<(Vec<Op>, Id)> {
    let mut out = vec![(vec![], class)];
    if depth == 0 {
        return out;
    }
    for kind in [OpKind::Reshape, OpKind::Transpose] {
        for (op, x) in unary(eg, class, kind) {
            for (mut moves, y) in moved_from(eg, x, depth - 1) {
                moves.insert(0, op.clone());
                out.push((moves, y));
            }
        }
    }
    out
}

/// The quantised tensors q of type `to` that `class` dequantises with the
/// scale `scale` and the zero point `zero`.
fn dequantised(eg: &EG, class: Id, scale: f64, zero: f64, to: DType) -> Vec<Id> {
    let mut out = vec![];
    for (centred, s) in binary(eg, class, OpKind::Mul) {
        if scalar(eg, s) != Some(scale) {
            continue;
        }
        let mut casts: Vec<Id> = vec![];
        if zero == 0.0 {
            casts.push(centred);
        }
        for (cast, z) in binary(eg, centred, OpKind::Sub) {
            if scalar(eg, z) == Some(zero) {
                casts.push(cast);
            }
        }
        for cast in casts {
            for (op, q) in unary(eg, cast, OpKind::Cast) {
                if op == (Op::Cast { to: DType::F32 }) && eg[q].data.ty.dtype == to {
                    out.push(q);
                }
            }
        }
    }
    out
}

impl Rule for RequantiseDequantised {
    fn name(&self) -> &'static str {
        "requantise-dequantised"
    }

    fn rewrites(&self, eg: &EG, class: Id) -> Vec<Rewrite> {
        let mut out = vec![];
        for (op, c) in ops_in(eg, class) {
            let (Op::Quantize { to }, [x, s, z]) = (op, c) else {
                continue;
            };
            let (Some(scale), Some(zero)) = (scalar(eg, eg.find(*s)), scalar(eg, eg.find(*z)))
            else {
                continue;
            };
            for (moves, d) in moved_from(eg, eg.find(*x), MAX_MOVES) {
                for q in dequantised(eg, d, scale, zero, *to) {
                    let mut alt = Alt::build();
                    let mut at = Ref::Class(q);
                    for op in moves.iter().rev() {
                        at = alt.push(op.clone(), vec![at]);
                    }
                    let alt = match at {
                        Ref::Class(q) => Alt::class(q),
                        Ref::New(_) => alt,
                    };
                    out.push(Rewrite { target: class, alt });
                }
            }
        }
        out
    }
}
