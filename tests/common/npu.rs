//! Compiling a graph for the NPU and running it on the simulator in
//! process (the path `m4c run --backend npu` takes, without the CLI).

use m4c_compiler::backend::{Artifact, CompileRequest};
use m4c_ir::Graph;
use m4c_ops::Value;
use m4c_runtime::bundle::format::CodeEntry;
use m4c_runtime::bundle::ModuleCode;
use m4c_runtime::exec::npu::{NpuModule, RunFigures};
use m4c_runtime::exec::Signature;

/// Compiles `g` calibrated on `inputs` for `target` (`edge-small`, ...),
/// fallback parts by the CPU backend (as `m4c run --backend npu`).
pub fn compile(g: &Graph, inputs: &[Value], target: &str) -> Artifact {
    let cal = m4c_npu_codegen::calibrate::calibrate(g, &[inputs.to_vec()]).unwrap();
    let request = CompileRequest {
        target: Some(target.into()),
        ..Default::default()
    };
    let cpu = Some(m4c_backends::npu_fallback());
    m4c_npu_codegen::compile_calibrated(g, &cal, &request, cpu).unwrap()
}

/// Compiles `g` calibrated on `inputs` for `target` and runs it once on
/// them: the outputs and the run's figures.
pub fn simulate(g: &Graph, inputs: &[Value], target: &str) -> (Vec<Value>, RunFigures) {
    let artifact = compile(g, inputs, target);
    let entry = CodeEntry {
        cpu: String::new(),
        section: format!("{}.{target}", g.name),
        target: target.into(),
    };
    let files: Vec<_> = artifact
        .files
        .iter()
        .filter_map(|f| f.section.map(|k| (k, f.bytes.as_slice())))
        .collect();
    let code = ModuleCode::from_memory("npu", entry, &files).unwrap();
    let module = NpuModule::from_sections(&g.name, &code, Signature::of(g), 1).unwrap();
    module.run_measured(inputs, 1).unwrap()
}
