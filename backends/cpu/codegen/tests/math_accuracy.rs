//! Accuracy of the vectorised transcendentals: each function compiled into
//! a graph, swept over a dense grid of its working range and compared with
//! the f64 function (std / libm) rounded to f32. The measured maxima are
//! documented in `docs/CPU_BACKEND.md`; the bounds below are those figures
//! rounded up, so a less accurate approximation fails here.

use m4c_cpu_codegen::{compile_graph, CompileOptions, Target};
use m4c_ir::{DType, Graph, Op, Tensor, TensorType};

/// Max error in units of the last place of the exact result rounded to
/// f32 (ulps below the smallest normal count as that ulp), and max
/// absolute error, of `op` over `count` points in `lo..hi`.
fn sweep(op: Op, lo: f64, hi: f64, count: usize, exact: fn(f64) -> f64) -> (f64, f64) {
    let xs: Vec<f32> = (0..count)
        .map(|i| (lo + (hi - lo) * i as f64 / (count - 1) as f64) as f32)
        .collect();
    let mut g = Graph::new("sweep");
    let x = g.add_input("x", TensorType::fixed(DType::F32, &[count]));
    let y = g.add_node(op, &[x], "y").unwrap();
    g.outputs.push(y);
    let options = CompileOptions {
        target: Target::parse(None, None).unwrap(),
        threads: 1,
    };
    let mut compiled = compile_graph(&g, &options).unwrap();
    let got = compiled.run(&[Tensor::from_f32(&[count], &xs)]).unwrap()[0]
        .to_f32_vec()
        .unwrap();
    let (mut ulps, mut abs) = (0.0f64, 0.0f64);
    for (&x, &y) in xs.iter().zip(&got) {
        let want = exact(f64::from(x));
        let rounded = want as f32;
        let ulp = f64::from(f32::from_bits(rounded.abs().to_bits() + 1) - rounded.abs())
            .max(f64::from(f32::MIN_POSITIVE));
        let err = (f64::from(y) - want).abs();
        ulps = ulps.max(err / ulp);
        abs = abs.max(err);
    }
    (ulps, abs)
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Name, op, range, exact function, bound in ulps.
type Sweep = (&'static str, Op, f64, f64, fn(f64) -> f64, f64);

#[test]
fn transcendentals_are_within_their_documented_error() {
    let cases: [Sweep; 8] = [
        ("exp", Op::Exp, -87.0, 88.0, f64::exp, 1.5),
        ("log", Op::Log, 1e-30, 1e30, f64::ln, 1.0),
        ("log (near 1)", Op::Log, 0.5, 2.0, f64::ln, 1.0),
        ("erf", Op::Erf, -5.0, 5.0, libm::erf, 7.0),
        ("tanh", Op::Tanh, -10.0, 10.0, f64::tanh, 5.5),
        ("sigmoid", Op::Sigmoid, -30.0, 30.0, sigmoid, 3.5),
        ("sin", Op::Sin, -100.0, 100.0, f64::sin, 2.0),
        ("cos", Op::Cos, -100.0, 100.0, f64::cos, 2.0),
    ];
    for (name, op, lo, hi, exact, max_ulps) in cases {
        let (ulps, abs) = sweep(op, lo, hi, 200_001, exact);
        eprintln!("{name:>14} on [{lo:e}, {hi:e}]: max {ulps:.2} ulp, max abs {abs:.2e}");
        assert!(ulps <= max_ulps, "{name}: {ulps} ulp (bound {max_ulps})");
    }
}
