//! Generated GEMM programs are bit-exact against the reference on random
//! shapes, for both dataflows, with and without forced tiling splits.

use m4c_npu::config::{Dataflow, MachineConfig};
use m4c_npu::kernels::gemm::{generate, GemmOperands};
use m4c_npu::sim::{simulate, SimOptions, TimingMode};
use proptest::prelude::*;

fn small_machine(rows: u32, cols: u32, dataflow: Dataflow, sram: u32, acc: u32) -> MachineConfig {
    MachineConfig {
        array_rows: rows,
        array_cols: cols,
        dataflow,
        weight_sram_bytes: sram,
        act_sram_bytes: sram,
        acc_bytes: acc,
        ..MachineConfig::edge_small()
    }
}

fn run(ops: &GemmOperands, config: &MachineConfig) -> Vec<i8> {
    let g = generate(ops, config, false).unwrap();
    let options = SimOptions {
        check_hazards: true,
        ..SimOptions::default()
    };
    let r = simulate(&g.program, config, options).unwrap();
    assert!(r.hazards.is_empty(), "hazards: {:?}", r.hazards);
    assert_eq!(r.stats.macs, (ops.m * ops.k * ops.n) as u64);
    let out = &r.dram[g.out_addr as usize..g.out_addr as usize + ops.m * ops.n];
    out.iter().map(|&b| b as i8).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn gemm_is_bit_exact(
        m in 1usize..40, k in 1usize..50, n in 1usize..40,
        rows in 1u32..12, cols in 1u32..12, ws: bool, tight: bool, seed: u64,
    ) {
        let dataflow = if ws { Dataflow::Ws } else { Dataflow::Os };
        // `tight` memories force the streamed dimension to be split.
        let (sram, acc) = if tight { (1024, 512) } else { (1 << 16, 1 << 16) };
        let config = small_machine(rows, cols, dataflow, sram, acc);
        let ops = GemmOperands::random(m, k, n, seed);
        prop_assert_eq!(run(&ops, &config), ops.reference());
    }
}

#[test]
fn vit_sized_gemm_on_edge_small() {
    let ops = GemmOperands::random(197, 96, 80, 7);
    let config = MachineConfig::edge_small();
    assert_eq!(run(&ops, &config), ops.reference());
}

#[test]
fn scalesim_compat_reproduces_the_fold_formula() {
    // WS: ceil(K/R) * ceil(N/C) folds of M + 2R + C - 2 cycles.
    let ops = GemmOperands::random(50, 70, 40, 1);
    let config = MachineConfig::scalesim_like(16, 16, Dataflow::Ws);
    let g = generate(&ops, &config, true).unwrap();
    let options = SimOptions {
        timing: TimingMode::ScaleSimCompat,
        ..SimOptions::default()
    };
    let r = simulate(&g.program, &config, options).unwrap();
    assert_eq!(r.stats.compute_cycles, 5 * 3 * (50 + 32 + 16 - 2));
    // OS: ceil(M/R) * ceil(N/C) folds of K + R + C - 2 cycles.
    let config = MachineConfig::scalesim_like(16, 16, Dataflow::Os);
    let g = generate(&ops, &config, true).unwrap();
    let r = simulate(&g.program, &config, options).unwrap();
    assert_eq!(r.stats.compute_cycles, 4 * 3 * (70 + 16 + 16 - 2));
}
