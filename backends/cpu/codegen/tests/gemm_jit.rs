//! JIT-compiled GEMMs against the f64 reference matmul, over many shapes
//! (odd sizes, edges of every tile and block), targets and thread counts.

mod common;

use common::{assert_close, random, reference};
use inkwell::context::Context;
use m4c_cpu_codegen::gemm::GemmSpec;
use m4c_cpu_codegen::{JitGemm, Target};
use m4c_cpu_device::ThreadPool;
use proptest::prelude::*;

fn check(
    target: &Target,
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
    threads: usize,
    seed: u64,
) {
    let (a, b, c0) = (
        random(m * k, seed),
        random(k * n, seed + 1),
        random(m * n, seed + 2),
    );
    let context = Context::create();
    let spec = GemmSpec {
        accumulate,
        ..GemmSpec::new("gemm", m, k, n)
    };
    let gemm = JitGemm::compile(&context, target, &spec, &b).unwrap();
    let pool = ThreadPool::new(threads).unwrap();
    let mut scratch = gemm.entry().scratch_for(&pool);
    let mut c = if accumulate {
        c0.clone()
    } else {
        vec![f32::NAN; m * n]
    };
    gemm.entry()
        .run(&a, gemm.packed_b(), &mut c, &pool, &mut scratch)
        .unwrap();
    let zeros = vec![0.0; m * n];
    let (exact, magnitude) = reference(&a, &b, if accumulate { &c0 } else { &zeros }, m, k, n);
    assert_close(&c, &exact, &magnitude, k + usize::from(accumulate));
}

fn host() -> Target {
    Target::parse(None, None).unwrap()
}

#[test]
fn edge_shapes_on_the_host_target() {
    // 1s, primes, one past the 14×32 tile, two K blocks (k_block 128), a
    // partial M remainder, more than one M block (m_block 252).
    for (m, k, n) in [
        (1, 1, 1),
        (7, 33, 65),
        (14, 128, 32),
        (15, 129, 33),
        (29, 257, 97),
        (1030, 3, 5),
    ] {
        check(&host(), m, k, n, false, 1, (m * k * n) as u64);
    }
}

#[test]
fn column_groups_with_a_larger_than_half_of_l2() {
    // A (300 × 500 floats) is larger than half of L2, so the panels are
    // grouped (16 per group on AVX-512): two groups, the second ending in the
    // N remainder, two M blocks, on one and two threads.
    for threads in [1, 2] {
        check(&host(), 300, 500, 530, false, threads, 11);
    }
}

#[test]
fn accumulates_into_c() {
    check(&host(), 17, 130, 40, true, 1, 7);
}

#[test]
fn threads_split_the_panels() {
    for threads in [2, 3] {
        check(&host(), 33, 65, 200, false, threads, 11);
    }
}

#[test]
fn avx2_target_runs_here_too() {
    let avx2 = Target::parse(Some("x86_64-avx2"), None).unwrap();
    for (m, k, n) in [(1, 1, 1), (7, 300, 17), (13, 5, 48)] {
        check(&avx2, m, k, n, false, 2, 3);
    }
}

#[test]
fn wrong_operand_lengths_are_errors() {
    let context = Context::create();
    let gemm =
        JitGemm::compile(&context, &host(), &GemmSpec::new("g", 2, 3, 4), &[0.0; 12]).unwrap();
    let pool = ThreadPool::new(1).unwrap();
    let mut scratch = gemm.entry().scratch_for(&pool);
    let err = gemm
        .entry()
        .run(
            &[0.0; 5],
            gemm.packed_b(),
            &mut [0.0; 8],
            &pool,
            &mut scratch,
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "kernel `g`: operand A has 5 elements, expected 6"
    );
    let err = JitGemm::compile(&context, &host(), &GemmSpec::new("g", 2, 3, 4), &[0.0; 11])
        .err()
        .unwrap();
    assert_eq!(
        err.to_string(),
        "packing a 3x4 matrix: operand B has 11 elements, expected 12"
    );
    let err = JitGemm::compile(&context, &host(), &GemmSpec::new("g", 0, 3, 4), &[])
        .err()
        .unwrap();
    assert_eq!(
        err.to_string(),
        "GEMM 0x3x4: every dimension must be at least 1"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn matches_reference(m in 1usize..80, k in 1usize..300, n in 1usize..130, threads in 1usize..3, seed: u64) {
        check(&host(), m, k, n, false, threads, seed);
    }
}
