//! The declared decompositions of the composite operators compute what the
//! interpreter's fused kernels compute.

use m4c_ir::op::NormKind;
use m4c_ir::{decompose, DType, Graph, Op, Tensor, TensorType};
use m4c_ops::{max_abs_rel_error, run_graph, Value};
use proptest::prelude::*;

fn check(op: Op, shape: &[usize], data: &[f32], extra: Vec<Tensor>) {
    check_within(op, shape, data, extra, 1e-5)
}

fn check_within(op: Op, shape: &[usize], data: &[f32], extra: Vec<Tensor>, tolerance: f64) {
    let mut g = Graph::new("c");
    let x = g.add_input("x", TensorType::fixed(DType::F32, shape));
    let mut ins = vec![x];
    for (i, t) in extra.into_iter().enumerate() {
        ins.push(g.add_const(format!("p{i}"), t));
    }
    let y = g.add_node(op, &ins, "y").unwrap();
    g.outputs.push(y);
    let d = decompose(&g).unwrap();
    d.verify().unwrap();
    assert!(d.nodes.iter().all(|n| !n.op.kind().is_composite()));
    let input = Value::from_tensor(&Tensor::from_f32(shape, data)).unwrap();
    let want = run_graph(&g, std::slice::from_ref(&input)).unwrap();
    let got = run_graph(&d, &[input]).unwrap();
    let (abs, _) = max_abs_rel_error(&got[0], &want[0]).unwrap();
    assert!(
        abs < tolerance,
        "max abs error {abs} (tolerance {tolerance})"
    );
}

/// The decomposition computes a norm's mean in f32 (the interpreter's
/// fused kernel in f64), so its result carries the f32 summation error of
/// the mean, up to `n·ε·max|x|`, divided by the row's standard deviation:
/// a near-constant row (two values 0.002 apart) amplifies it several
/// hundred times. 1e-5 plus that bound, per row, times the largest scale.
fn norm_tolerance(data: &[f32], n: usize, epsilon: f32, scale_max: f32) -> f64 {
    let worst = data
        .chunks(n)
        .map(|row| {
            let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
            let var = row
                .iter()
                .map(|&v| (f64::from(v) - mean).powi(2))
                .sum::<f64>()
                / n as f64;
            let max = row.iter().fold(0f64, |m, &v| m.max(f64::from(v).abs()));
            n as f64 * f64::from(f32::EPSILON) * max / (var + f64::from(epsilon)).sqrt()
        })
        .fold(0f64, f64::max);
    1e-5 + worst * f64::from(scale_max)
}

fn case() -> impl Strategy<Value = (Vec<usize>, Vec<f32>)> {
    prop::collection::vec(1usize..6, 1..4).prop_flat_map(|shape| {
        let n: usize = shape.iter().product();
        (Just(shape), prop::collection::vec(-4.0f32..4.0, n))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn softmax_expands_exactly((shape, data) in case(), pick in 0usize..3) {
        let axis = pick % shape.len();
        check(Op::Softmax { axis }, &shape, &data, vec![]);
    }

    #[test]
    fn layer_and_rms_norm_expand_exactly((shape, data) in case(), pick in 0usize..3, rms: bool) {
        let axis = pick % shape.len();
        let n: usize = shape[axis..].iter().product();
        let trailing = &shape[axis..];
        let scale = Tensor::from_f32(trailing, &(0..n).map(|i| 0.5 + i as f32 * 0.1).collect::<Vec<_>>());
        let bias = Tensor::from_f32(trailing, &(0..n).map(|i| i as f32 * -0.2).collect::<Vec<_>>());
        let (kind, extra) = if rms { (NormKind::Rms, vec![scale]) } else { (NormKind::Layer, vec![scale, bias]) };
        let tolerance = if rms { 1e-5 } else { norm_tolerance(&data, n, 1e-5, 0.5 + (n - 1) as f32 * 0.1) };
        check_within(Op::Norm { kind, axis, epsilon: 1e-5 }, &shape, &data, extra, tolerance);
    }

    #[test]
    fn gelu_expands_exactly((shape, data) in case(), tanh_approx: bool) {
        check(Op::Gelu { tanh_approx }, &shape, &data, vec![]);
    }
}
