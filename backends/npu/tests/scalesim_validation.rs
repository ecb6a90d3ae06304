//! SCALE-Sim-compatible timing reproduces SCALE-Sim v3's compute cycles
//! exactly on the layers of docs/NPU_VALIDATION.md. The SCALE-Sim numbers
//! are committed in tests/data/scalesim_reference.csv (produced by
//! scripts/scalesim/run_validation.py), so this test needs no Python.

use m4c_npu::config::{Dataflow, MachineConfig};
use m4c_npu::kernels::reference::ConvShape;
use m4c_npu::kernels::{conv, gemm};
use m4c_npu::program::Program;
use m4c_npu::sim::{simulate, SimOptions, TimingMode};

fn program(layer: &str, config: &MachineConfig) -> Program {
    match layer {
        "vit_qkv" => {
            gemm::generate(&gemm::GemmOperands::random(197, 768, 768, 1), config, true)
                .unwrap()
                .program
        }
        "llama_decode" => {
            gemm::generate(&gemm::GemmOperands::random(1, 4096, 4096, 1), config, true)
                .unwrap()
                .program
        }
        "resnet_conv3x3" => {
            let shape = ConvShape {
                h: 56,
                w: 56,
                c_in: 64,
                c_out: 64,
                kh: 3,
                kw: 3,
                stride: 1,
                pad: 1,
            };
            conv::generate(&conv::ConvOperands::random(shape, 1), config, true)
                .unwrap()
                .program
        }
        other => panic!("unknown layer {other}"),
    }
}

#[test]
fn compat_mode_matches_committed_scalesim_cycles() {
    let csv = include_str!("data/scalesim_reference.csv");
    let mut rows = 0;
    for line in csv.lines().skip(1) {
        let cols: Vec<&str> = line.split(',').collect();
        let (layer, array, dataflow, expected) =
            (cols[0], cols[1], cols[2], cols[3].parse::<u64>().unwrap());
        let size: u32 = array.split('x').next().unwrap().parse().unwrap();
        let df: Dataflow = dataflow.parse().unwrap();
        let config = MachineConfig::scalesim_like(size, size, df);
        let options = SimOptions {
            timing: TimingMode::ScaleSimCompat,
            ..SimOptions::default()
        };
        let stats = simulate(&program(layer, &config), &config, options)
            .unwrap()
            .stats;
        assert_eq!(
            stats.scalesim_compute_cycles,
            Some(expected),
            "{layer} {array} {dataflow}"
        );
        rows += 1;
    }
    assert_eq!(rows, 12);
}
