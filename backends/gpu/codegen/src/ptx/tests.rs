//! The PTX emitter on the sample graphs of `crate::tests` (every kernel
//! shape): well-formed PTX for sm_90 with one `.entry` per planned
//! kernel, launch geometry identical to the WGSL emitter's, and snapshots
//! of a GEMM with a fused elementwise group, of the row kernels and of
//! an implicit-GEMM convolution.
//! `tests/gpu_ptx.rs` assembles every fixture's PTX with ptxas.

use crate::lower::lower;
use crate::tests::{conv_gemm, convs, elementwise_and_gemm, rows, the_rest};
use crate::{ptx, wgsl};

/// The PTX of `g`, checked for its header and entry points.
fn ptx_of(g: &m4c_ir::Graph) -> String {
    let program = lower(g, None).unwrap();
    let (text, table) = ptx::emit(&program.kernels).unwrap();
    assert!(text.contains(".target sm_90"), "{}", &text[..400]);
    assert!(text.contains(".address_size 64"));
    for k in &table {
        assert!(
            text.contains(&format!(".entry {}(", k.entry)),
            "{}: no .entry {}",
            g.name,
            k.entry
        );
    }
    let (_, wgsl_table) = wgsl::emit(&program.kernels, program.weights.len()).unwrap();
    assert_eq!(
        table, wgsl_table,
        "{}: the two emitters launch alike",
        g.name
    );
    text
}

#[test]
fn every_kernel_shape_emits_ptx() {
    for g in [elementwise_and_gemm(), rows(), the_rest(), convs()] {
        let text = ptx_of(&g);
        // No libdevice or other external calls: the math is inline.
        assert!(!text.contains(".extern .func"), "{}", g.name);
        assert!(!text.contains("__nv_"), "{}", g.name);
    }
}

#[test]
fn gemms_and_rows_use_shared_memory_and_barriers() {
    for g in [elementwise_and_gemm(), rows(), conv_gemm()] {
        let text = ptx_of(&g);
        assert!(text.contains(".shared"), "{}", g.name);
        assert!(text.contains("bar.sync"), "{}", g.name);
    }
}

#[test]
fn elementwise_and_gemm_ptx() {
    insta::assert_snapshot!(ptx_of(&elementwise_and_gemm()));
}

#[test]
fn row_kernels_ptx() {
    insta::assert_snapshot!(ptx_of(&rows()));
}

#[test]
fn conv_gemm_ptx() {
    insta::assert_snapshot!(ptx_of(&conv_gemm()));
}
