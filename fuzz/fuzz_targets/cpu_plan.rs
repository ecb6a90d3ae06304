//! Arbitrary bytes as the CPU backend's compiled-code plan (`plan.json`),
//! checked by the CPU device against the IMU encoder's IR exactly as a
//! bundle's code is checked at open, before any native code is loaded:
//! every buffer reference, extent, GEMM operand, symbol and size in the
//! plan is hostile. The check returns an error or accepts, never panics
//! or allocates by what the plan claims.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use m4c_compiler::{lower, LowerOptions, OnnxModel};
use m4c_ir::Graph;
use m4c_runtime::bundle::format::{CodeEntry, SectionKind};
use m4c_runtime::bundle::ModuleCode;
use m4c_runtime::exec::compiled::CpuDevice;
use m4c_runtime::exec::device::Device;

/// The module the plans are checked against (the seed plans were compiled
/// from it by `m4c compile --backend cpu`).
fn graph() -> &'static Graph {
    static GRAPH: OnceLock<Graph> = OnceLock::new();
    GRAPH.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/imu_encoder.onnx");
        let model = OnnxModel::load(std::path::Path::new(path)).expect("the IMU fixture loads");
        lower(&model, &LowerOptions::default()).expect("the IMU fixture lowers")
    })
}

/// A plan's own target and CPU, so that the check goes past the entry
/// comparison whenever the JSON names them.
fn entry(plan: &[u8]) -> CodeEntry {
    let field = |key: &str| -> String {
        serde_json::from_slice::<serde_json::Value>(plan)
            .ok()
            .and_then(|v| v.get(key)?.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    CodeEntry {
        cpu: field("cpu"),
        section: "imu".into(),
        target: field("target"),
    }
}

/// Weights as large as the seed plan's `weights.bin` (zeros: only their
/// length is checked).
const WEIGHTS: [u8; 112_832] = [0; 112_832];

fuzz_target!(|data: &[u8]| {
    let files = [
        (SectionKind::CodePlan, data),
        (SectionKind::CodeWeights, &WEIGHTS[..]),
        (SectionKind::Code, &b"\x7fELF"[..]),
    ];
    let Ok(code) = ModuleCode::from_memory("cpu", entry(data), &files) else {
        return;
    };
    let _ = CpuDevice.check(&code, graph());
});
