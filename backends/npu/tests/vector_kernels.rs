//! The vector-unit kernels (softmax, LayerNorm/RMSNorm, elementwise binary,
//! lookup-table activations, depthwise conv) against two truths: bit for bit
//! against the plain Rust reference of the same integer arithmetic, and the
//! dequantised output against f64 math within each kernel's documented
//! quantisation error bound.

use m4c_npu::config::MachineConfig;
use m4c_npu::kernels::depthwise::DepthwiseOperands;
use m4c_npu::kernels::eltwise::{BinaryOperands, EltOp};
use m4c_npu::kernels::lut::{Activation, UnaryOperands};
use m4c_npu::kernels::norm::{NormKind, NormOperands};
use m4c_npu::kernels::reference::ConvShape;
use m4c_npu::kernels::softmax::{SoftmaxOperands, OUTPUT};
use m4c_npu::kernels::{KernelProgram, Quant};
use m4c_npu::sim::{simulate, SimOptions};
use proptest::prelude::*;

/// A machine with `sram` bytes of activation SRAM, so that tiles split.
fn machine(sram: u32, lanes: u32) -> MachineConfig {
    MachineConfig {
        act_sram_bytes: sram,
        acc_bytes: sram,
        vector_lanes: lanes,
        ..MachineConfig::edge_small()
    }
}

fn run(k: &KernelProgram, config: &MachineConfig) -> Vec<i8> {
    let options = SimOptions {
        check_hazards: true,
        ..SimOptions::default()
    };
    let r = simulate(&k.program, config, options).unwrap();
    assert!(r.hazards.is_empty(), "hazards: {:?}", r.hazards);
    k.output(&r.dram)
}

/// Largest |dequantised output - truth clamped to the output range|.
fn max_error(out: &[i8], q: Quant, truth: impl Iterator<Item = f64>) -> f64 {
    let (lo, hi) = (q.dequantize(-128), q.dequantize(127));
    out.iter()
        .zip(truth)
        .map(|(&o, t)| (q.dequantize(o) - t.clamp(lo, hi)).abs())
        .fold(0.0, f64::max)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn softmax(rows in 1usize..12, cols in 1usize..200, scale in 0.005f64..0.3, small: bool, seed: u64) {
        let ops = SoftmaxOperands::random(rows, cols, scale, seed);
        let config = machine(if small { 4096 } else { 1 << 16 }, 16);
        let out = run(&m4c_npu::kernels::softmax::generate(&ops, &config).unwrap(), &config);
        prop_assert_eq!(&out, &ops.reference().unwrap());
        let truth = ops.x.chunks(cols).flat_map(|row| {
            let x: Vec<f64> = row.iter().map(|&v| ops.input.dequantize(v)).collect();
            let max = x.iter().cloned().fold(f64::MIN, f64::max);
            let sum: f64 = x.iter().map(|v| (v - max).exp()).sum();
            x.into_iter().map(move |v| (v - max).exp() / sum)
        });
        let err = max_error(&out, OUTPUT, truth);
        prop_assert!(err <= 1.0 / 255.0, "softmax error {err}");
    }

    /// At a calibrated output scale (symmetric, the largest probability
    /// at code 127), as the compiler asks: the program computes the
    /// reference, within half an output step plus the exponentials'
    /// rounding of the truth.
    #[test]
    fn softmax_at_a_calibrated_output_scale(rows in 1usize..4, cols in 200usize..1600, scale in 0.005f64..0.05, seed: u64) {
        let mut ops = SoftmaxOperands::random(rows, cols, scale, seed);
        let config = machine(1 << 16, 16);
        let truth: Vec<f64> = ops.x.chunks(cols).flat_map(|row| {
            let x: Vec<f64> = row.iter().map(|&v| ops.input.dequantize(v)).collect();
            let max = x.iter().cloned().fold(f64::MIN, f64::max);
            let sum: f64 = x.iter().map(|v| (v - max).exp()).sum();
            x.into_iter().map(move |v| (v - max).exp() / sum)
        }).collect();
        let top = truth.iter().cloned().fold(0.0, f64::max);
        ops.output = Quant { scale: top / 127.0, zero_point: 0 };
        let out = run(&m4c_npu::kernels::softmax::generate(&ops, &config).unwrap(), &config);
        prop_assert_eq!(&out, &ops.reference().unwrap());
        let bits = (cols as f64).log2().ceil();
        let bound = ops.output.scale / 2.0 + cols as f64 * 2f64.powf(bits) / 2f64.powi(31) + 2f64.powi(-14);
        let err = max_error(&out, ops.output, truth.iter().cloned());
        prop_assert!(err <= bound, "softmax error {err} > {bound}");
    }

    #[test]
    fn norms(rows in 1usize..10, cols in 2usize..160, layer: bool, small: bool, seed: u64) {
        let kind = if layer { NormKind::LayerNorm } else { NormKind::RmsNorm };
        let ops = NormOperands::random(kind, rows, cols, seed);
        let config = machine(if small { 4096 } else { 1 << 16 }, 8);
        let out = run(&m4c_npu::kernels::norm::generate(&ops, &config).unwrap(), &config);
        prop_assert_eq!(&out, &ops.reference().unwrap());
        let truth = ops.x.chunks(cols).flat_map(|row| {
            let x: Vec<f64> = row.iter().map(|&v| ops.input.dequantize(v)).collect();
            let n = cols as f64;
            let mean = if layer { x.iter().sum::<f64>() / n } else { 0.0 };
            let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
            let inv = 1.0 / (var + ops.eps).sqrt();
            let ops = &ops;
            x.into_iter().enumerate().map(move |(c, v)| {
                let beta = ops.beta.get(c).map_or(0.0, |&b| b as f64 * ops.beta_scale);
                (v - mean) * inv * ops.gamma[c] as f64 * ops.gamma_scale + beta
            })
        });
        let err = max_error(&out, ops.output, truth);
        prop_assert!(err <= 0.6 * ops.output.scale, "{kind:?} error {err}");
    }

    #[test]
    fn elementwise(op in 0usize..5, rows in 1usize..20, cols in 1usize..100, small: bool, seed: u64) {
        let op = [EltOp::Add, EltOp::Sub, EltOp::Mul, EltOp::Max, EltOp::Min][op];
        let ops = BinaryOperands::random(op, rows, cols, seed);
        let config = machine(if small { 1024 } else { 1 << 16 }, 16);
        let out = run(&m4c_npu::kernels::eltwise::generate(&ops, &config).unwrap(), &config);
        prop_assert_eq!(&out, &ops.reference().unwrap());
        let [qa, qb, qo] = ops.quant;
        let truth = ops.a.iter().zip(&ops.b).map(|(&a, &b)| op.eval(qa.dequantize(a), qb.dequantize(b)));
        let bound = 0.5 * qo.scale + if op == EltOp::Mul {
            qa.scale * qb.scale
        } else {
            6.0 * qa.scale.max(qb.scale) / (1 << 20) as f64
        };
        let err = max_error(&out, qo, truth);
        prop_assert!(err <= bound, "{op:?} error {err} > {bound}");
    }

    #[test]
    fn lookup_activations(f in 0usize..6, rows in 1usize..20, cols in 1usize..120, seed: u64) {
        let f = [Activation::Gelu, Activation::Silu, Activation::Sigmoid, Activation::Tanh,
                 Activation::Exp, Activation::Identity][f];
        let ops = UnaryOperands::random(f, rows, cols, seed);
        let config = machine(2048, 16);
        let out = run(&m4c_npu::kernels::lut::generate(&ops, &config).unwrap(), &config);
        prop_assert_eq!(&out, &ops.reference());
        // Independent formulas for the truth.
        let truth = ops.x.iter().map(|&v| {
            let x = ops.input.dequantize(v);
            match f {
                Activation::Gelu => x * 0.5 * one_plus_erf_over_sqrt2(x),
                Activation::Silu => x / (1.0 + (-x).exp()),
                Activation::Sigmoid => 0.5 * (1.0 + (x / 2.0).tanh()),
                Activation::Tanh => 1.0 - 2.0 / ((2.0 * x).exp() + 1.0),
                Activation::Exp => 2f64.powf(x * std::f64::consts::LOG2_E),
                Activation::Identity => x,
            }
        });
        let err = max_error(&out, ops.output, truth);
        prop_assert!(err <= 0.5 * ops.output.scale + 1e-9, "{f:?} error {err}");
    }

    #[test]
    fn depthwise_conv(
        h in 1usize..10, w in 1usize..10, c in 1usize..24, k in 1usize..4,
        stride in 1usize..3, pad in 0usize..2, small: bool, seed: u64, fused: bool,
    ) {
        prop_assume!(h + 2 * pad >= k && w + 2 * pad >= k);
        let shape = ConvShape { h, w, c_in: c, c_out: c, kh: k, kw: k, stride, pad };
        let mut ops = DepthwiseOperands::random(shape, seed);
        // A table in the output stage: any permutation-like map will do.
        let offset = seed as usize % 256;
        ops.table = fused.then(|| std::array::from_fn(|i| ((i * 37 + offset) % 256) as u8 as i8));
        let config = machine(if small { 2048 } else { 1 << 16 }, 8);
        let out = run(&m4c_npu::kernels::depthwise::generate(&ops, &config).unwrap(), &config);
        prop_assert_eq!(out, ops.reference());
    }
}

/// `1 + erf(x / sqrt 2)` by the Maclaurin series of `erf`, independent of
/// the table's `libm::erf`; for the inputs here (|x| < 6.1, |z| < 4.3) the
/// cancellation between terms costs at most ~1e-8, far below an output step.
fn one_plus_erf_over_sqrt2(x: f64) -> f64 {
    // erf(z) = 2/sqrt(pi) * sum_n (-1)^n z^(2n+1) / (n! (2n+1)), summed in
    // f64 until the terms vanish.
    let z = x / std::f64::consts::SQRT_2;
    let (mut term, mut sum, mut n) = (z, z, 0.0);
    while term.abs() > 1e-17 * sum.abs().max(1e-300) && n < 200.0 {
        n += 1.0;
        term *= -z * z / n;
        sum += term / (2.0 * n + 1.0);
    }
    1.0 + 2.0 / std::f64::consts::PI.sqrt() * sum
}

/// A flat row of 1500 (Whisper tiny's attention): every probability is
/// 1/1500, which steps of 1/256 round to zero and a calibrated output
/// scale keeps.
#[test]
fn long_flat_softmax_rows_keep_their_probabilities() {
    let config = machine(1 << 16, 16);
    let cols = 1500;
    let mut ops = SoftmaxOperands::random(2, cols, 0.02, 7);
    ops.x = vec![3; 2 * cols];
    let coarse = run(
        &m4c_npu::kernels::softmax::generate(&ops, &config).unwrap(),
        &config,
    );
    assert!(
        coarse.iter().all(|&c| OUTPUT.dequantize(c) == 0.0),
        "{:?}",
        &coarse[..4]
    );
    ops.output = Quant {
        scale: 1.0 / (cols as f64 * 127.0),
        zero_point: 0,
    };
    let fine = run(
        &m4c_npu::kernels::softmax::generate(&ops, &config).unwrap(),
        &config,
    );
    assert!(
        fine.iter().all(|&c| (126..=127).contains(&c)),
        "{:?}",
        &fine[..4]
    );
}

#[test]
fn bad_kernel_parameters_are_errors() {
    let config = MachineConfig::edge_small();
    let mut ops = SoftmaxOperands::random(2, 3, 0.1, 1);
    ops.input.scale = -1.0;
    assert!(m4c_npu::kernels::softmax::generate(&ops, &config).is_err());
    let mut ops = NormOperands::random(NormKind::LayerNorm, 2, 8, 1);
    ops.gamma.pop();
    assert!(m4c_npu::kernels::norm::generate(&ops, &config).is_err());
    let huge = SoftmaxOperands::random(1, 70_000, 0.1, 1);
    let err = m4c_npu::kernels::softmax::generate(&huge, &config).unwrap_err();
    assert!(err.to_string().contains("65536"), "{err}");
    let shape = ConvShape {
        h: 4,
        w: 4,
        c_in: 3,
        c_out: 5,
        kh: 3,
        kw: 3,
        stride: 1,
        pad: 1,
    };
    let err = m4c_npu::kernels::depthwise::generate(&DepthwiseOperands::random(shape, 1), &config)
        .unwrap_err();
    assert!(err.to_string().contains("c_out == c_in"), "{err}");
}
