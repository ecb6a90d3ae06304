//! Simulator speed benchmark (not a test): functional + timing simulation of
//! int8 GEMM layers, reported in MACs per host second, and of vector-unit
//! kernels, reported in elements per host second.
//!
//! `cargo run --release -p m4c-npu --example sim_speed`

use m4c_npu::config::MachineConfig;
use m4c_npu::kernels::gemm::{generate, GemmOperands};
use m4c_npu::kernels::norm::{NormKind, NormOperands};
use m4c_npu::kernels::softmax::SoftmaxOperands;
use m4c_npu::kernels::KernelProgram;
use m4c_npu::program::Program;
use m4c_npu::sim::{simulate, SimOptions};
use std::time::Instant;

/// The best of three simulation times of `program`, in seconds.
fn best_seconds(program: &Program, config: &MachineConfig) -> f64 {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            let r = simulate(program, config, SimOptions::default()).expect("runs");
            std::hint::black_box(&r.dram);
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let cases = [
        ("edge-small", MachineConfig::edge_small(), (197, 768, 768)),
        ("edge-small", MachineConfig::edge_small(), (512, 1024, 1024)),
        (
            "phone-flagship",
            MachineConfig::phone_flagship(),
            (512, 1024, 1024),
        ),
        (
            "phone-flagship",
            MachineConfig::phone_flagship(),
            (1, 4096, 4096),
        ),
    ];
    for (name, config, (m, k, n)) in cases {
        let ops = GemmOperands::random(m, k, n, 42);
        let g = generate(&ops, &config, false).expect("layer fits");
        let best = best_seconds(&g.program, &config);
        let macs = (m * k * n) as f64;
        println!(
            "{name:15} GEMM {m}x{k}x{n}: {} instructions, {:.3} s, {:.2} G MAC/s",
            g.program.instrs.len(),
            best,
            macs / best / 1e9
        );
    }
    let config = MachineConfig::edge_small();
    let kernels: [(&str, KernelProgram, usize); 2] = [
        (
            "softmax 2364x197",
            m4c_npu::kernels::softmax::generate(
                &SoftmaxOperands::random(2364, 197, 0.05, 1),
                &config,
            )
            .expect("fits"),
            2364 * 197,
        ),
        (
            "layernorm 197x768",
            m4c_npu::kernels::norm::generate(
                &NormOperands::random(NormKind::LayerNorm, 197, 768, 1),
                &config,
            )
            .expect("fits"),
            197 * 768,
        ),
    ];
    for (name, k, elements) in kernels {
        let best = best_seconds(&k.program, &config);
        println!(
            "edge-small      {name}: {} instructions, {best:.4} s, {:.1} M elements/s",
            k.program.instrs.len(),
            elements as f64 / best / 1e6
        );
    }
}
