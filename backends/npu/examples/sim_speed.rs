//! Simulator speed benchmark (not a test): functional + timing simulation of
//! int8 GEMM layers, reported in MACs per host second.
//!
//! `cargo run --release -p m4c-npu --example sim_speed`

use m4c_npu::config::MachineConfig;
use m4c_npu::kernels::gemm::{generate, GemmOperands};
use m4c_npu::sim::{simulate, SimOptions};
use std::time::Instant;

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
        let best = (0..3)
            .map(|_| {
                let t = Instant::now();
                let r = simulate(&g.program, &config, SimOptions::default()).expect("runs");
                std::hint::black_box(&r.dram);
                t.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min);
        let macs = (m * k * n) as f64;
        println!(
            "{name:15} GEMM {m}x{k}x{n}: {} instructions, {:.3} s, {:.2} G MAC/s",
            g.program.instrs.len(),
            best,
            macs / best / 1e9
        );
    }
}
