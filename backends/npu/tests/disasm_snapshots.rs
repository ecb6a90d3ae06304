//! Snapshots of the disassembly of small generated programs: a reviewer sees
//! every change to what the generators emit.

use m4c_npu::config::MachineConfig;
use m4c_npu::disasm::disassemble;
use m4c_npu::kernels::conv::ConvOperands;
use m4c_npu::kernels::gemm::GemmOperands;
use m4c_npu::kernels::reference::ConvShape;
use m4c_npu::kernels::softmax::SoftmaxOperands;
use m4c_npu::kernels::{conv, gemm, softmax};

/// A small machine, so that even tiny layers tile and double-buffer.
fn machine() -> MachineConfig {
    MachineConfig {
        array_rows: 4,
        array_cols: 4,
        act_sram_bytes: 1024,
        weight_sram_bytes: 1024,
        acc_bytes: 1024,
        ..MachineConfig::edge_small()
    }
}

#[test]
fn gemm_disassembly() {
    let ops = GemmOperands::random(6, 5, 6, 1);
    let g = gemm::generate(&ops, &machine(), false).unwrap();
    insta::assert_snapshot!(disassemble(&g.program));
}

#[test]
fn conv_disassembly() {
    let shape = ConvShape {
        h: 3,
        w: 3,
        c_in: 2,
        c_out: 3,
        kh: 3,
        kw: 3,
        stride: 2,
        pad: 1,
    };
    let g = conv::generate(&ConvOperands::random(shape, 1), &machine(), false).unwrap();
    insta::assert_snapshot!(disassemble(&g.program));
}

#[test]
fn softmax_disassembly() {
    let ops = SoftmaxOperands::random(12, 40, 0.1, 1);
    let k = softmax::generate(&ops, &machine()).unwrap();
    insta::assert_snapshot!(disassemble(&k.program));
}
