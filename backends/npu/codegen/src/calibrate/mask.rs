//! Which elements of a calibration sample are attention-mask sentinels
//! because of what a softmax makes of them, not because of their
//! magnitude: exporters write masks as `-inf`, `finfo(float32).min`,
//! `-1e9` or `-10000`, and only the first two are beyond
//! [`super::MASK_MAGNITUDE`]. An element of a softmax input more than
//! [`SOFTMAX_FLOOR`] below its row's maximum weighs less than e^-50 and
//! is masked; so is an element of an operand of the `Add` chain feeding
//! that input when it alone puts every output element it reaches there,
//! whatever the other operand holds. Masked elements are left out of a
//! value's range (which then holds the ordinary values only), and the
//! operand's code -128 is made deep enough to saturate the sum
//! (`Mask::floor`).

use std::collections::HashMap;

use m4c_ir::{Graph, Op, ValueId};
use m4c_ops::Value;
use ndarray::{ArrayD, Axis, IxDyn};

use super::is_mask_sentinel;

/// How far below its row's maximum (natural-log units) a softmax input
/// element lies before the softmax cannot tell it from `-inf`.
pub const SOFTMAX_FLOOR: f32 = 50.0;

/// The masked elements of one value in one sample (by flat index).
pub(super) type Masked = HashMap<ValueId, Vec<bool>>;

/// An `Add` operand that carries a mask into a softmax input: the sum
/// `out` and the other operand, whose calibrated ranges say how deep the
/// operand's sentinel code must reach (see [`super::Calibration::quant`]).
#[derive(Clone, Debug, PartialEq)]
pub(super) struct MaskOperand {
    pub operand: ValueId,
    pub out: ValueId,
    pub other: ValueId,
}

/// The softmax inputs of `g` (value, axis) and every `Add` operand on the
/// chains of `Add`s that feed them.
pub(super) fn mask_chains(g: &Graph) -> (Vec<(ValueId, usize)>, Vec<MaskOperand>) {
    let producer: HashMap<ValueId, &m4c_ir::Node> = g.nodes.iter().map(|n| (n.output, n)).collect();
    let mut softmax = vec![];
    let mut operands = vec![];
    for n in &g.nodes {
        let (Op::Softmax { axis }, Some(&x)) = (&n.op, n.inputs.first()) else {
            continue;
        };
        softmax.push((x, *axis));
        let mut stack = vec![x];
        while let Some(v) = stack.pop() {
            let Some(node) = producer.get(&v).filter(|p| p.op == Op::Add) else {
                continue;
            };
            let [a, b] = node.inputs[..] else { continue };
            for (operand, other) in [(a, b), (b, a)] {
                let m = MaskOperand {
                    operand,
                    out: v,
                    other,
                };
                if !operands.contains(&m) {
                    operands.push(m);
                    stack.push(operand);
                }
            }
        }
    }
    (softmax, operands)
}

/// The masked elements of the softmax inputs and of their `Add` chains in
/// one sample (`env`: every value's result, by id).
pub(super) fn masked(
    softmax: &[(ValueId, usize)],
    operands: &[MaskOperand],
    env: &[Option<Value>],
) -> Masked {
    let f32_of = |v: ValueId| match env.get(v.index()) {
        Some(Some(Value::F32(a))) => Some(a),
        _ => None,
    };
    // Per element of each value on a chain: the largest it may be and
    // still be masked (`-inf`: never).
    let mut below: HashMap<ValueId, ArrayD<f32>> = HashMap::new();
    for &(x, axis) in softmax {
        let Some(a) = f32_of(x).filter(|a| axis < a.ndim()) else {
            continue;
        };
        let t = row_floor(a, axis);
        merge(&mut below, x, t);
    }
    // Operands appear after their sums (a depth-first walk from each
    // softmax), so each sum's thresholds are complete when read.
    for m in operands {
        let (Some(t), Some(o), Some(p)) = (below.get(&m.out), f32_of(m.operand), f32_of(m.other))
        else {
            continue;
        };
        let reach = p
            .iter()
            .filter(|x| !is_mask_sentinel(f64::from(**x)))
            .fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        if let Some(t) = broadcast_min(t, o.shape()) {
            merge(&mut below, m.operand, t.mapv(|x| x - reach));
        }
    }
    below
        .into_iter()
        .filter_map(|(v, t)| {
            let a = f32_of(v)?;
            let flags: Vec<bool> = a.iter().zip(t.iter()).map(|(x, t)| x <= t).collect();
            flags.contains(&true).then_some((v, flags))
        })
        .collect()
}

/// Each element's row maximum (over `axis`, ordinary elements only) less
/// [`SOFTMAX_FLOOR`].
fn row_floor(a: &ArrayD<f32>, axis: usize) -> ArrayD<f32> {
    let max = a.map_axis(Axis(axis), |row| {
        row.iter()
            .filter(|x| !is_mask_sentinel(f64::from(**x)))
            .fold(f32::NEG_INFINITY, |m, &x| m.max(x))
    });
    let floor = max.insert_axis(Axis(axis)).mapv(|m| m - SOFTMAX_FLOOR);
    floor.broadcast(a.shape()).map_or_else(
        || ArrayD::from_elem(a.raw_dim(), f32::NEG_INFINITY),
        |b| b.to_owned(),
    )
}

/// Combines thresholds of a value reached along two chains: an element
/// is masked only where both say so.
fn merge(below: &mut HashMap<ValueId, ArrayD<f32>>, v: ValueId, t: ArrayD<f32>) {
    match below.get_mut(&v) {
        Some(old) if old.shape() == t.shape() => old.zip_mut_with(&t, |o, &n| *o = o.min(n)),
        Some(_) => {}
        None => {
            below.insert(v, t);
        }
    }
}

/// `t` (in an `Add`'s output shape) reduced by minimum onto an operand
/// of shape `shape` that numpy broadcasting stretched to it (`None`
/// when `shape` does not broadcast to `t`'s).
fn broadcast_min(t: &ArrayD<f32>, shape: &[usize]) -> Option<ArrayD<f32>> {
    let out = t.shape();
    let pad = out.len().checked_sub(shape.len())?;
    let full: Vec<usize> = std::iter::repeat_n(1, pad)
        .chain(shape.iter().copied())
        .collect();
    if full.iter().zip(out).any(|(&f, &o)| f != o && f != 1) {
        return None;
    }
    if full == out {
        return Some(t.clone());
    }
    let mut r = ArrayD::from_elem(IxDyn(&full), f32::INFINITY);
    for (idx, &x) in t.indexed_iter() {
        let at: Vec<usize> = (0..out.len())
            .map(|d| if full[d] == 1 { 0 } else { idx[d] })
            .collect();
        let slot = &mut r[IxDyn(&at)];
        *slot = slot.min(x);
    }
    r.into_shape_with_order(IxDyn(shape)).ok()
}

#[cfg(test)]
mod tests {
    use crate::calibrate::{calibrate, MASK_GAP};
    use m4c_ir::{DType, Graph, Op, Tensor, TensorType};
    use m4c_ops::Value;

    /// scores + mask -> Softmax, the mask a run-time input or a constant.
    fn attention(constant_mask: bool) -> Graph {
        let mut g = Graph::new("g");
        let x = g.add_input("x", TensorType::fixed(DType::F32, &[1, 4]));
        let m = match constant_mask {
            true => g.add_const("m", Tensor::from_f32(&[1, 4], &[0.0, 0.0, -1e9, 0.0])),
            false => g.add_input("m", TensorType::fixed(DType::F32, &[1, 4])),
        };
        let s = g.add_node(Op::Add, &[x, m], "s").unwrap();
        let y = g.add_node(Op::Softmax { axis: 1 }, &[s], "y").unwrap();
        g.outputs.push(y);
        g
    }

    fn row(v: [f32; 4]) -> Value {
        Value::F32(ndarray::arr2(&[v]).into_dyn())
    }

    /// A `-1e9` mask (below `MASK_MAGNITUDE`) is a mask: left out of its
    /// range and of the sum's, with a code -128 deep enough to saturate
    /// the sum; the scores keep their whole range.
    #[test]
    fn a_minus_1e9_mask_feeding_a_softmax_is_calibrated_as_a_mask() {
        let g = attention(false);
        let sample = vec![row([0.5, -1.0, 2.0, 0.3]), row([0.0, 0.0, -1e9, 0.0])];
        let cal = calibrate(&g, &[sample]).unwrap();
        let (m, s, x) = (cal.ranges["m"], cal.ranges["s"], cal.ranges["x"]);
        assert_eq!((m.min, m.max, m.nonfinite), (0.0, 0.0, true));
        assert_eq!((s.min, s.max, s.nonfinite), (-1.0, 0.5, true));
        assert_eq!((x.min, x.max, x.nonfinite), (-1.0, 2.0, false));
        // The sum's least ordinary value less the scores' largest.
        assert_eq!(m.floor, Some(-3.0));
        let q = cal.quant("m").unwrap();
        assert_eq!((q.quantize(0.0), q.quantize(-1e9)), (127, -128));
        assert!(q.dequantize(-128) <= -MASK_GAP);
    }

    /// A constant `-1e9` mask is recognised when it is lowered
    /// (`Calibration::is_sentinel`); ordinary values are not.
    #[test]
    fn a_constant_mask_is_named_by_its_sentinels() {
        let g = attention(true);
        let cal = calibrate(&g, &[vec![row([0.5, -1.0, 2.0, 0.3])]]).unwrap();
        assert!(cal.is_sentinel("m", -1e9));
        assert!(!cal.is_sentinel("m", 0.0));
        assert!(!cal.is_sentinel("x", -1.0));
        assert!(cal.is_sentinel("x", f64::from(f32::MIN)));
    }

    /// Outside a softmax's `Add` chain a large value is an activation.
    #[test]
    fn large_values_elsewhere_keep_their_range() {
        let mut g = Graph::new("g");
        let x = g.add_input("x", TensorType::fixed(DType::F32, &[1, 4]));
        let y = g.add_node(Op::Exp, &[x], "y").unwrap();
        g.outputs.push(y);
        let cal = calibrate(&g, &[vec![row([0.0, 0.0, -1e9, 0.0])]]).unwrap();
        assert_eq!(
            (cal.ranges["x"].min, cal.ranges["x"].nonfinite),
            (-1e9, false)
        );
    }
}
