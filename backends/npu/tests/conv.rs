//! Generated convolutions are bit-exact against the reference.

use m4c_npu::config::{Dataflow, MachineConfig};
use m4c_npu::kernels::conv::{generate, ConvOperands};
use m4c_npu::kernels::reference::ConvShape;
use m4c_npu::sim::{simulate, SimOptions};
use proptest::prelude::*;

fn run(ops: &ConvOperands, config: &MachineConfig) -> Vec<i8> {
    let g = generate(ops, config, false).unwrap();
    let r = simulate(
        &g.program,
        config,
        SimOptions {
            check_hazards: true,
            ..SimOptions::default()
        },
    )
    .unwrap();
    assert!(r.hazards.is_empty(), "hazards: {:?}", r.hazards);
    let len = ops.shape.out_h() * ops.shape.out_w() * ops.shape.c_out;
    r.dram[g.out_addr as usize..g.out_addr as usize + len]
        .iter()
        .map(|&b| b as i8)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    #[test]
    fn conv_is_bit_exact(
        h in 1usize..9, w in 1usize..9, c_in in 1usize..10, c_out in 1usize..10,
        kernel in prop::sample::select(vec![1usize, 3]), stride in 1usize..3, pad in 0usize..2,
        array in 2u32..9, ws: bool, per_channel: bool, seed: u64,
    ) {
        prop_assume!(h + 2 * pad >= kernel && w + 2 * pad >= kernel);
        let shape = ConvShape { h, w, c_in, c_out, kh: kernel, kw: kernel, stride, pad };
        let dataflow = if ws { Dataflow::Ws } else { Dataflow::Os };
        let config = MachineConfig { array_rows: array, array_cols: array, dataflow, acc_bytes: 2048, ..MachineConfig::edge_small() };
        let mut ops = ConvOperands::random(shape, seed);
        if per_channel {
            ops = ops.per_channel(seed ^ 1);
        }
        prop_assert_eq!(run(&ops, &config), ops.reference());
    }
}

#[test]
fn resnet_like_3x3_on_edge_small() {
    let shape = ConvShape {
        h: 14,
        w: 14,
        c_in: 40,
        c_out: 48,
        kh: 3,
        kw: 3,
        stride: 1,
        pad: 1,
    };
    let ops = ConvOperands::random(shape, 3);
    assert_eq!(run(&ops, &MachineConfig::edge_small()), ops.reference());
    let ops = ops.per_channel(4);
    let out = run(&ops, &MachineConfig::edge_small());
    assert_eq!(out, ops.reference());
    // Per-channel scales really differ from the per-tensor result.
    assert_ne!(out, ConvOperands::random(shape, 3).reference());
}

#[test]
fn strided_3x3() {
    let shape = ConvShape {
        h: 15,
        w: 11,
        c_in: 5,
        c_out: 7,
        kh: 3,
        kw: 3,
        stride: 2,
        pad: 1,
    };
    let ops = ConvOperands::random(shape, 9);
    assert_eq!(run(&ops, &MachineConfig::edge_small()), ops.reference());
}
