//! The quantised kernels JIT-compiled on every x86 flavour this host runs
//! (AVX-512 VNNI `vpdpbusd`, AVX-512 and AVX2 `vpmaddwd`, AVX-VNNI on
//! 256 bits) against plain Rust references: the int8 GEMM's integer sums
//! and requantisation bit for bit, the int4 GEMMs within the f32 bound of
//! their sums (the int8-compute one after quantising x exactly as the
//! graph does).

mod common;

use common::{assert_close, random, reference};
use inkwell::context::Context;
use m4c_cpu_codegen::quant::{
    DotKind, Int4A8Spec, Int4GemmSpec, Int4Weights, Int8GemmSpec, Int8Output, Int8Runtime,
    Int8Weights, JitKernel,
};
use m4c_cpu_codegen::Target;
use proptest::prelude::*;

/// The targets to check, with the dot product each must use; those the
/// host cannot run are skipped.
fn targets() -> Vec<(Target, DotKind)> {
    [
        (None, None, None),
        (Some("x86_64-avx512"), None, Some(DotKind::Pmaddwd)),
        (
            Some("x86_64-avx512"),
            Some("icelake-server"),
            Some(DotKind::Vnni),
        ),
        (Some("x86_64-avx2"), None, Some(DotKind::Pmaddwd)),
        (Some("x86_64-avx2"), Some("alderlake"), Some(DotKind::Vnni)),
    ]
    .into_iter()
    .filter_map(|(name, cpu, kind)| {
        let target = Target::parse(name, cpu).unwrap();
        target.check_runs_on_host().ok()?;
        let dot = DotKind::for_target(&target);
        if let Some(kind) = kind {
            assert_eq!(dot, kind, "{name:?} {cpu:?}");
        }
        // AVX-VNNI code needs the host to have it (the check above only
        // knows the ISA).
        if name == Some("x86_64-avx2") && dot == DotKind::Vnni && !host_has("avxvnni") {
            return None;
        }
        if name == Some("x86_64-avx512") && dot == DotKind::Vnni && !host_has("avx512vnni") {
            return None;
        }
        Some((target, dot))
    })
    .collect()
}

fn host_has(feature: &str) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        match feature {
            "avxvnni" => std::arch::is_x86_feature_detected!("avxvnni"),
            "avx512vnni" => std::arch::is_x86_feature_detected!("avx512vnni"),
            _ => false,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = feature;
        false
    }
}

/// Deterministic integers in `lo..=hi`.
fn ints(len: usize, lo: i32, hi: i32, seed: u64) -> Vec<i32> {
    random(len, seed)
        .into_iter()
        .map(|v| lo + (((v + 1.0) / 2.0 * (hi - lo + 1) as f32) as i32).min(hi - lo))
        .collect()
}

struct Int8Case {
    m: usize,
    k: usize,
    n: usize,
    a_signed: bool,
    a_zero_point: i32,
    b_signed: bool,
    per_column: bool,
    output: Int8Output,
    bias: bool,
    seed: u64,
}

impl Int8Case {
    fn range(signed: bool) -> (i32, i32) {
        if signed {
            (-128, 127)
        } else {
            (0, 255)
        }
    }

    fn check(&self, target: &Target, pieces: usize) {
        let (m, k, n) = (self.m, self.k, self.n);
        let (alo, ahi) = Self::range(self.a_signed);
        let a = ints(m * k, alo, ahi, self.seed);
        // Weights whose centred value fits int8: signed weights with zero
        // points in -4..=4 on values in -120..=120, unsigned ones around
        // a zero point of 127 or 128 (centred
        // to -127..=128 or -128..=127: columns stored negated or not).
        let columns = if self.per_column { n } else { 1 };
        let (b, zb) = if self.b_signed {
            (
                ints(k * n, -120, 120, self.seed + 1),
                ints(columns, -4, 4, self.seed + 2),
            )
        } else {
            (
                ints(k * n, 0, 255, self.seed + 1),
                ints(columns, 127, 128, self.seed + 2),
            )
        };
        let multipliers: Vec<f32> = random(columns, self.seed + 3)
            .iter()
            .map(|v| (v.abs() + 0.01) * 1e-3)
            .collect();
        let bias = random(n, self.seed + 4);
        let spec = Int8GemmSpec {
            symbol: "q8".into(),
            m,
            k,
            n,
            a_signed: self.a_signed,
            a_zero_point: self.a_zero_point,
            output: self.output,
            runtime: Int8Runtime::default(),
        };
        let weights = Int8Weights {
            b: &b,
            b_zero_points: &zb,
            multipliers: &multipliers,
            bias: self.bias.then_some(&bias[..]),
            int_bias: None,
        };
        let at = |v: &[i32], j: usize| v[if v.len() == 1 { 0 } else { j }];
        let atf = |v: &[f32], j: usize| v[if v.len() == 1 { 0 } else { j }];
        let mut want = Vec::new();
        for i in 0..m {
            for j in 0..n {
                let sum: i32 = (0..k)
                    .map(|p| (a[i * k + p] - self.a_zero_point) * (b[p * n + j] - at(&zb, j)))
                    .sum();
                let value = || {
                    let v = sum as f32 * atf(&multipliers, j);
                    if self.bias {
                        v + bias[j]
                    } else {
                        v
                    }
                };
                match self.output {
                    Int8Output::I32 => want.extend(sum.to_le_bytes()),
                    Int8Output::F32 => want.extend(value().to_le_bytes()),
                    Int8Output::Quantized {
                        signed,
                        scale,
                        zero_point,
                    } => {
                        let (lo, hi) = Self::range(signed);
                        let q = (value() / scale).round_ties_even() as i64 + i64::from(zero_point);
                        want.push(q.clamp(i64::from(lo), i64::from(hi)) as u8);
                    }
                }
            }
        }
        let context = Context::create();
        let kernel = JitKernel::int8_gemm(&context, target, &spec, &weights).unwrap();
        let input: Vec<u8> = a.iter().map(|&v| v as u8).collect();
        let mut got = vec![0u8; want.len()];
        kernel.run(&input, &mut got, pieces).unwrap();
        assert!(
            got == want,
            "{} {m}×{k}×{n} {:?}: first difference at byte {}",
            target.name(),
            self.output,
            got.iter().zip(&want).position(|(g, w)| g != w).unwrap()
        );
    }
}

fn output(kind: u8, signed: bool) -> Int8Output {
    match kind {
        0 => Int8Output::I32,
        1 => Int8Output::F32,
        _ => Int8Output::Quantized {
            signed,
            scale: 0.05,
            zero_point: if signed { 3 } else { 128 },
        },
    }
}

#[test]
fn int8_edges_on_every_target() {
    // 1s, K below and past each group size, one past the tiles, the N
    // remainder, several panels.
    for (target, _) in targets() {
        for (m, k, n) in [
            (1, 1, 1),
            (3, 3, 5),
            (15, 7, 33),
            (29, 130, 97),
            (2, 768, 64),
        ] {
            for kind in 0..3 {
                Int8Case {
                    m,
                    k,
                    n,
                    a_signed: kind == 1,
                    a_zero_point: if kind == 1 { -5 } else { 131 },
                    b_signed: kind != 2,
                    per_column: kind != 0,
                    output: output(kind, kind == 2),
                    bias: kind == 1,
                    seed: (m * k * n + kind as usize) as u64,
                }
                .check(&target, 2);
            }
        }
    }
}

#[test]
fn int8_requantisation_saturates_and_rounds_half_to_even() {
    // Sums of ±600 after the multiplier against a scale of 1: most
    // outputs saturate at one end or the other.
    for (target, _) in targets() {
        for signed in [false, true] {
            Int8Case {
                m: 9,
                k: 40,
                n: 20,
                a_signed: true,
                a_zero_point: 0,
                b_signed: true,
                per_column: false,
                output: Int8Output::Quantized {
                    signed,
                    scale: 1.0,
                    zero_point: if signed { 0 } else { 128 },
                },
                bias: false,
                seed: 5,
            }
            .check(&target, 1);
        }
    }
}

#[test]
fn int8_weights_that_do_not_fit_after_centring_are_refused() {
    let target = Target::parse(Some("x86_64-avx2"), None).unwrap();
    let spec = Int8GemmSpec {
        symbol: "q".into(),
        m: 1,
        k: 1,
        n: 1,
        a_signed: false,
        a_zero_point: 0,
        output: Int8Output::I32,
        runtime: Int8Runtime::default(),
    };
    let err = spec
        .pack(
            &target,
            &Int8Weights {
                b: &[200],
                b_zero_points: &[0],
                multipliers: &[1.0],
                bias: None,
                int_bias: None,
            },
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("weight 200 minus its zero point 0 at (0, 0) fits int8 neither"),
        "{err}"
    );
}

/// Checks the weight-only GEMM of shape `(m, k, n)` with blocks of
/// `block` and `bits`-bit weights (4 or 8). Unsigned weights get a zero
/// point per block, fractional when `seed` is a multiple of 4 (the
/// kernel's two-subtraction path), integer otherwise.
fn int4_check(
    target: &Target,
    (m, k, n): (usize, usize, usize),
    (block, bits): (usize, u8),
    signed: bool,
    seed: u64,
    pieces: usize,
) {
    let blocks = k.div_ceil(block);
    let top = (1i32 << bits) - 1;
    let nibbles = ints(n * blocks * block, 0, top, seed);
    let packed: Vec<u8> = match bits {
        8 => nibbles.iter().map(|&v| v as u8).collect(),
        _ => nibbles
            .chunks(2)
            .map(|p| (p[0] | (p[1] << 4)) as u8)
            .collect(),
    };
    let scales: Vec<f32> = random(n * blocks, seed + 1)
        .iter()
        .map(|v| v * 0.1)
        .collect();
    let zero_points: Vec<f32> = if signed {
        vec![0.0]
    } else {
        let fraction = if seed.is_multiple_of(4) { 0.375 } else { 0.0 };
        ints(n * blocks, 0, top, seed + 2)
            .iter()
            .map(|&z| z as f32 + fraction)
            .collect()
    };
    let x = random(m * k, seed + 3);
    let value = |q: i32| -> f32 {
        if signed && q > top / 2 {
            (q - top - 1) as f32
        } else {
            q as f32
        }
    };
    // Wᵀ (k × n), dequantised exactly as the interpreter does: (q − zp)·s.
    let mut wt = vec![0.0f32; k * n];
    for j in 0..n {
        for p in 0..k {
            let entry = j * blocks + p / block;
            let zp = zero_points[if zero_points.len() == 1 { 0 } else { entry }];
            wt[p * n + j] = (value(nibbles[j * blocks * block + p]) - zp) * scales[entry];
        }
    }
    let (exact, magnitude) = reference(&x, &wt, &vec![0.0; m * n], m, k, n);
    let spec = Int4GemmSpec {
        symbol: "q4".into(),
        m,
        k,
        n,
        block,
        signed,
        bits,
        integer_zero_points: Int4GemmSpec::integer_zero_points(&zero_points),
    };
    let context = Context::create();
    let kernel = JitKernel::int4_gemm(
        &context,
        target,
        &spec,
        &Int4Weights {
            packed: &packed,
            scales: &scales,
            zero_points: &zero_points,
        },
    )
    .unwrap();
    let input: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut out = vec![0u8; m * n * 4];
    kernel.run(&input, &mut out, pieces).unwrap();
    let got: Vec<f32> = out
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_close(&got, &exact, &magnitude, blocks * block);
}

#[test]
fn int4_edges_on_every_target() {
    for (target, _) in targets() {
        for (m, k, n, block) in [
            (1, 32, 1, 32),
            (1, 100, 9, 32),
            (3, 64, 13, 16),
            (2, 300, 6, 128),
            (1, 4096, 8, 32),
        ] {
            for signed in [false, true] {
                int4_check(
                    &target,
                    (m, k, n),
                    (block, 4),
                    signed,
                    (m + k + n) as u64,
                    2,
                );
                int4_check(
                    &target,
                    (m, k, n),
                    (block, 8),
                    signed,
                    (m + k + n) as u64,
                    3,
                );
            }
        }
    }
}

/// The int8-compute int4 GEMM at one shape against the reference: x
/// quantised per block as the importer's graph does (f32 `max|x| / 127`,
/// 1 for an all-zero block, division, round half to even), then
/// `Σ (q·s)·((w − zp)·scale)` in f64.
fn int4_a8_check(
    target: &Target,
    (m, k, n): (usize, usize, usize),
    block: usize,
    signed: bool,
    seed: u64,
    pieces: usize,
) {
    let blocks = k.div_ceil(block);
    let nibbles = ints(n * blocks * block, 0, 15, seed);
    let packed: Vec<u8> = nibbles
        .chunks(2)
        .map(|p| (p[0] | (p[1] << 4)) as u8)
        .collect();
    let scales: Vec<f32> = random(n * blocks, seed + 1)
        .iter()
        .map(|v| v * 0.1)
        .collect();
    let zero_points: Vec<f32> = if signed {
        vec![0.0]
    } else {
        ints(n * blocks, 0, 15, seed + 2)
            .iter()
            .map(|&z| z as f32)
            .collect()
    };
    let mut x = random(m * k, seed + 3);
    // An all-zero block (scale 1) and a value on a rounding tie.
    if k > block {
        x[..block].fill(0.0);
    }
    x[k - 1] = 1.0;
    let value = |q: i32| if signed && q > 7 { q - 16 } else { q };
    let (mut exact, mut magnitude) = (vec![0.0f64; m * n], vec![0.0f64; m * n]);
    for r in 0..m {
        let row = &x[r * k..(r + 1) * k];
        for b in 0..blocks {
            let part = &row[b * block..((b + 1) * block).min(k)];
            let top = part.iter().fold(0.0f32, |t, v| t.max(v.abs()));
            let s = match top / 127.0 {
                0.0 => 1.0,
                s => s,
            };
            for (i, &v) in part.iter().enumerate() {
                let q = (v / s).round_ties_even().clamp(-128.0, 127.0);
                let a = f64::from(q) * f64::from(s);
                let p = b * block + i;
                for j in 0..n {
                    let entry = j * blocks + b;
                    let zp = zero_points[if zero_points.len() == 1 { 0 } else { entry }];
                    let w = (f64::from(value(nibbles[j * blocks * block + p])) - f64::from(zp))
                        * f64::from(scales[entry]);
                    exact[r * n + j] += a * w;
                    magnitude[r * n + j] += (a * w).abs();
                }
            }
        }
    }
    let spec = Int4A8Spec {
        symbol: "q4a8".into(),
        m,
        k,
        n,
        block,
        signed,
    };
    let context = Context::create();
    let kernel = JitKernel::int4_a8_gemm(
        &context,
        target,
        &spec,
        &Int4Weights {
            packed: &packed,
            scales: &scales,
            zero_points: &zero_points,
        },
    )
    .unwrap();
    let input: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut out = vec![0u8; m * n * 4];
    kernel.run(&input, &mut out, pieces).unwrap();
    let got: Vec<f32> = out
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    // Per block one rounding of `scale·s` and one of the accumulation.
    assert_close(&got, &exact, &magnitude, 2 * blocks + 1);
}

#[test]
fn int4_a8_edges_on_every_target() {
    for (target, _) in targets() {
        for (m, k, n, block) in [
            (1, 32, 1, 32),
            (1, 100, 9, 32),
            (3, 64, 17, 16),
            (2, 300, 6, 128),
            (1, 72, 40, 8),
            (1, 4096, 8, 256),
        ] {
            for signed in [false, true] {
                int4_a8_check(&target, (m, k, n), block, signed, (m + k + n) as u64, 2);
            }
        }
    }
}

#[test]
fn int4_bad_shapes_are_refused() {
    let spec = Int4GemmSpec {
        symbol: "q".into(),
        m: 1,
        k: 32,
        n: 1,
        block: 24,
        signed: false,
        bits: 4,
        integer_zero_points: true,
    };
    assert!(spec
        .check()
        .unwrap_err()
        .to_string()
        .contains("block size 24"));
    let spec = Int4GemmSpec { block: 32, ..spec };
    let err = spec
        .pack(&Int4Weights {
            packed: &[0; 15],
            scales: &[1.0],
            zero_points: &[8.0],
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("weights of 15 elements, expected 16"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn int8_matches_reference(
        m in 1usize..40, k in 1usize..90, n in 1usize..70,
        kind in 0u8..3, a_signed: bool, b_signed: bool, per_column: bool, bias: bool,
        pieces in 1usize..4, seed in 0u64..1000,
    ) {
        let bias = bias && kind != 0;
        for (target, _) in targets() {
            Int8Case {
                m, k, n, a_signed,
                a_zero_point: if a_signed { (seed % 11) as i32 - 5 } else { 120 + (seed % 17) as i32 },
                b_signed, per_column,
                output: output(kind, b_signed),
                bias, seed,
            }
            .check(&target, pieces);
        }
    }

    #[test]
    fn int4_matches_reference(
        m in 1usize..5, k in 1usize..300, n in 1usize..20, block_log in 1u32..8,
        signed: bool, eight: bool, pieces in 1usize..4, seed in 0u64..1000,
    ) {
        for (target, _) in targets() {
            int4_check(&target, (m, k, n), (1 << block_log, if eight { 8 } else { 4 }), signed, seed, pieces);
        }
    }

    #[test]
    fn int4_a8_matches_reference(
        m in 1usize..5, k in 1usize..300, n in 1usize..40, block_log in 3u32..9,
        signed: bool, pieces in 1usize..4, seed in 0u64..1000,
    ) {
        for (target, _) in targets() {
            int4_a8_check(&target, (m, k, n), 1 << block_log, signed, seed, pieces);
        }
    }
}
