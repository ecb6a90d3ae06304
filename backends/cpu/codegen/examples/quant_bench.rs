//! Speed of the quantised kernels on one thread of this host (`cargo run
//! -p m4c-cpu-codegen --example quant_bench`; the kernels are LLVM `-O3`
//! code and their timing excludes all harness work, so the Rust build
//! profile does not matter):
//!
//! * the int8 GEMM (VNNI where the host CPU name has it, else `vpmaddwd`),
//!   with a uint8 A (onnxruntime's activations) and an int8 one (`m4c
//!   quantize`'s), against the f32 GEMM on BERT-base shapes (sequence 128), in GOP/s
//!   and GFLOP/s (2 operations per multiply-add either way);
//! * the int4 weight-only GEMV of decode, `1×4096×4096` (weights resident
//!   in the last-level cache when hot) and `1×4096×65536` (128 MiB of
//!   weights, as 16 layers' worth streamed from memory), in GB/s of
//!   weight bytes (scales and zero points included) against the
//!   single-thread read bandwidth of the f32 GEMV over 128 MiB, with f32
//!   activations and with int8 ones (`accuracy_level = 4`).
//!
//! Each figure is the median of repeated runs after warm-up.

use std::time::Instant;

use inkwell::context::Context;
use m4c_cpu_codegen::gemm::GemmSpec;
use m4c_cpu_codegen::quant::{
    DotKind, Int4A8Spec, Int4GemmSpec, Int4Weights, Int8GemmSpec, Int8Output, Int8Runtime,
    Int8Weights, JitKernel,
};
use m4c_cpu_codegen::{JitGemm, Target};
use m4c_cpu_device::ThreadPool;

/// Median seconds of `run` over `runs` calls after two warm-ups.
fn median(runs: usize, mut run: impl FnMut()) -> f64 {
    run();
    run();
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[runs / 2]
}

fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect()
}

/// Single-thread read bandwidth as this backend's generated code sees it:
/// the f32 GEMV `1×4096×8192` (the f32 GEMM's code, vector loads of its
/// packed B and one FMA each), which streams 128 MiB of weights.
fn read_bandwidth(target: &Target) -> f64 {
    let (k, n) = (4096, 8192);
    let context = Context::create();
    let b = vec![0.5f32; k * n];
    let gemm = JitGemm::compile(&context, target, &GemmSpec::new("gemv", 1, k, n), &b).unwrap();
    drop(b);
    let pool = ThreadPool::new(1).unwrap();
    let mut scratch = gemm.entry().scratch_for(&pool);
    let x = vec![1.0f32; k];
    let mut y = vec![0.0f32; n];
    let seconds = median(7, || {
        gemm.entry()
            .run(&x, gemm.packed_b(), &mut y, &pool, &mut scratch)
            .unwrap()
    });
    (k * n * 4) as f64 / seconds / 1e9
}

fn int8_vs_f32(target: &Target, m: usize, k: usize, n: usize, a_signed: bool) {
    let context = Context::create();
    let spec = Int8GemmSpec {
        symbol: "q8".into(),
        m,
        k,
        n,
        a_signed,
        a_zero_point: if a_signed { 0 } else { 128 },
        output: Int8Output::Quantized {
            signed: false,
            scale: 0.05,
            zero_point: 128,
        },
        runtime: Int8Runtime::default(),
    };
    let b: Vec<i32> = bytes(k * n, 1)
        .iter()
        .map(|&v| i32::from(v as i8))
        .collect();
    let weights = Int8Weights {
        b: &b,
        b_zero_points: &[0],
        multipliers: &[1e-4],
        bias: None,
        int_bias: None,
    };
    let kernel = JitKernel::int8_gemm(&context, target, &spec, &weights).unwrap();
    let a = bytes(m * k, 2);
    let q = kernel.time(&a, 21).unwrap();

    let bf: Vec<f32> = b.iter().map(|&v| v as f32).collect();
    let gemm = JitGemm::compile(&context, target, &GemmSpec::new("f", m, k, n), &bf).unwrap();
    let pool = ThreadPool::new(1).unwrap();
    let mut scratch = gemm.entry().scratch_for(&pool);
    let af: Vec<f32> = a.iter().map(|&v| f32::from(v)).collect();
    let mut c = vec![0.0f32; m * n];
    let f = median(21, || {
        gemm.entry()
            .run(&af, gemm.packed_b(), &mut c, &pool, &mut scratch)
            .unwrap()
    });
    let ops = 2.0 * (m * k * n) as f64;
    println!(
        "{m}x{k}x{n}, A {}: int8 {:.1} GOP/s ({:.3} ms), f32 {:.1} GFLOP/s ({:.3} ms), int8/f32 time {:.2}",
        if a_signed { "int8" } else { "uint8" },
        ops / q / 1e9,
        q * 1e3,
        ops / f / 1e9,
        f * 1e3,
        q / f
    );
}

fn int4_gemv(target: &Target, k: usize, n: usize, int8_compute: bool, bandwidth: f64) {
    let context = Context::create();
    let block = 32;
    let blocks = k / block;
    let spec = Int4GemmSpec {
        symbol: "q4".into(),
        m: 1,
        k,
        n,
        block,
        signed: false,
        bits: 4,
        integer_zero_points: true,
    };
    let packed = bytes(n * k / 2, 3);
    let scales = vec![0.01f32; n * blocks];
    let zero_points = vec![8.0f32; n * blocks];
    let weights = Int4Weights {
        packed: &packed,
        scales: &scales,
        zero_points: &zero_points,
    };
    let a8 = Int4A8Spec {
        symbol: "q4a8".into(),
        m: 1,
        k,
        n,
        block,
        signed: false,
    };
    let (kernel, streamed) = if int8_compute {
        let kernel = JitKernel::int4_a8_gemm(&context, target, &a8, &weights).unwrap();
        (kernel, a8.streamed_bytes(target))
    } else {
        let kernel = JitKernel::int4_gemm(&context, target, &spec, &weights).unwrap();
        (kernel, spec.streamed_bytes())
    };
    let x: Vec<u8> = (0..k)
        .flat_map(|i| (i as f32 * 1e-3).to_le_bytes())
        .collect();
    let seconds = kernel.time(&x, 11).unwrap();
    let gbs = streamed as f64 / seconds / 1e9;
    println!(
        "int4 GEMV 1x{k}x{n} (block {block}, {} activations): {:.3} ms, {gbs:.1} GB/s of weights = {:.0} % of the read bandwidth",
        if int8_compute { "int8" } else { "f32" },
        seconds * 1e3,
        100.0 * gbs / bandwidth
    );
}

fn main() {
    let target = Target::parse(None, None).unwrap();
    println!(
        "target {} (cpu {}), int8 dot product {:?}, 1 thread",
        target.name(),
        target.cpu,
        DotKind::for_target(&target)
    );
    let bandwidth = read_bandwidth(&target);
    println!("single-thread read bandwidth (f32 GEMV 1x4096x8192, 128 MiB): {bandwidth:.1} GB/s");
    for (m, k, n) in [(128, 768, 768), (128, 768, 3072), (128, 3072, 768)] {
        for a_signed in [false, true] {
            int8_vs_f32(&target, m, k, n, a_signed);
        }
    }
    for int8_compute in [false, true] {
        int4_gemv(&target, 4096, 4096, int8_compute, bandwidth);
        int4_gemv(&target, 4096, 65536, int8_compute, bandwidth);
    }
}
