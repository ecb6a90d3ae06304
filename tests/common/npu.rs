//! Compiling a graph for the NPU and running it on the simulator in
//! process (the path `m4c run --backend npu` takes, without the CLI).
//! Each test file that includes it compiles it; not every file uses every
//! helper.
#![allow(dead_code)]

use m4c_compiler::backend::{Artifact, CodeGenerator, CompileRequest};
use m4c_ir::Graph;
use m4c_ops::Value;
use m4c_runtime::bundle::format::CodeEntry;
use m4c_runtime::bundle::ModuleCode;
use m4c_runtime::exec::npu::{NpuModule, RunFigures};
use m4c_runtime::exec::Signature;

/// Compiles `g` calibrated on `inputs` for `target` (`edge-small`, ...),
/// fallback parts by the CPU backend (as `m4c run --backend npu`).
pub fn compile(g: &Graph, inputs: &[Value], target: &str) -> Artifact {
    compile_with(g, inputs, target, Some(m4c_backends::npu_fallback()))
}

/// [`compile`] with the fallback parts compiled by `cpu` (none: kept as
/// IR for the interpreter).
pub fn compile_with(
    g: &Graph,
    inputs: &[Value],
    target: &str,
    cpu: Option<&dyn CodeGenerator>,
) -> Artifact {
    let cal = m4c_npu_codegen::calibrate::calibrate(g, &[inputs.to_vec()]).unwrap();
    let request = CompileRequest {
        target: Some(target.into()),
        ..Default::default()
    };
    m4c_npu_codegen::compile_calibrated(g, &cal, &request, cpu).unwrap()
}

/// Loads `artifact` of `g` on the NPU device as `m4c run` does.
pub fn load_artifact(g: &Graph, artifact: &Artifact, target: &str) -> Result<NpuModule, String> {
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
    NpuModule::from_sections(&g.name, &code, Signature::of(g), 1)
}

/// Compiles `g` calibrated on `inputs` for `target` and runs it once on
/// them: the outputs and the run's figures.
pub fn simulate(g: &Graph, inputs: &[Value], target: &str) -> (Vec<Value>, RunFigures) {
    let module = load_artifact(g, &compile(g, inputs, target), target).unwrap();
    module.run_measured(inputs, 1).unwrap()
}

/// Fixture `name` lowered for the shapes of its `.inputs.npz` and
/// optimised for `target`'s cost model, as `m4c run --backend npu`
/// prepares it, with its inputs in graph order.
#[allow(
    dead_code,
    reason = "not every test file that includes this module uses it"
)]
pub fn fixture_graph(name: &str, target: &str) -> (Graph, Vec<Value>) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let model = m4c_compiler::OnnxModel::load(&dir.join(format!("{name}.onnx"))).unwrap();
    let inputs = m4c_runtime::read_npz(&dir.join(format!("{name}.inputs.npz"))).unwrap();
    let proto = model.graph();
    let inits: std::collections::HashSet<&str> =
        proto.initializer.iter().map(|t| t.name.as_str()).collect();
    let mut options = m4c_compiler::LowerOptions::default();
    let mut feeds = vec![];
    for i in proto
        .input
        .iter()
        .filter(|i| !inits.contains(i.name.as_str()))
    {
        let v = &inputs[&i.name];
        options
            .input_shapes
            .insert(i.name.clone(), v.shape().to_vec());
        feeds.push(v.clone());
    }
    let lowered = m4c_compiler::lower(&model, &options).unwrap();
    let config = m4c_npu::config::MachineConfig::load(target).unwrap();
    let cost = m4c_npu_codegen::roofline(&config);
    let (g, _) = m4c_compiler::opt::optimise(&lowered, &Default::default(), &cost).unwrap();
    (g, feeds)
}
