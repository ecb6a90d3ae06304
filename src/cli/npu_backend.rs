//! `--backend npu[:CONFIG]` for `run` and `bench`: the float graph is
//! calibrated on `--calibrate DATA.npz`, else on the run's own inputs
//! (announced with one `note:` line),
//! compiled by `m4c-npu-codegen` into NPU parts and CPU-fallback parts
//! (the fallback compiled by the CPU backend, `m4c_backends::npu_fallback`),
//! and loaded on the runtime's `npu` device (the simulator; the fallback
//! through the CPU device); `bench` prints what was measured. `--strict`
//! refuses a model with any fallback, listing what would fall back.
//! `m4c firmware build --backend npu` compiles each module the same way
//! ([`compile_artifact`], calibrated on its `--calibrate` data) and `m4c
//! run M4.fw` reports the engines of the loaded parts as `run` does
//! ([`announce_engines`]). The bench report (summary, layer table with
//! SQNR and ONNX nodes, JSON) is in `figures`, its trace in `trace`.

mod figures;
mod trace;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use m4c_compiler::backend::{Artifact, CompileRequest};
use m4c_ir::Graph;
use m4c_ops::Value;
use m4c_runtime::bundle::format::CodeEntry;
use m4c_runtime::bundle::ModuleCode;
use m4c_runtime::exec::npu::{NpuModule, PartEngine};
use m4c_runtime::exec::Signature;

use figures::{csv, summary};
pub use figures::{onnx_node_names, report};

use super::CliResult;

/// How `--backend npu` compiles: the machine, the threads of the
/// compiled fallback code, and whether any fallback is refused.
#[derive(Clone, Debug, Default)]
pub struct NpuRequest {
    /// `--backend npu:CONFIG` / `--target` (`None`: edge-small).
    pub target: Option<String>,
    /// Threads the compiled fallback code may use.
    pub threads: usize,
    /// `--strict`: an error when any node falls back to the CPU.
    pub strict: bool,
    /// `--layer-by-layer`: run every NPU layer as a program of its own
    /// instead of each part's layers linked into one.
    pub layer_by_layer: bool,
}

/// Calibrates `graph` on the arrays of `calibrate` (`--calibrate
/// DATA.npz`), else on the run's `inputs` (graph input order), announced
/// with a `note:` line, compiles it and loads it on the simulated NPU.
pub fn prepare(
    graph: &Graph,
    inputs: &[Value],
    calibrate: Option<&Path>,
    request: &NpuRequest,
) -> CliResult<(Arc<NpuModule>, Artifact)> {
    let config = request
        .target
        .as_deref()
        .unwrap_or(m4c_npu_codegen::DEFAULT_TARGET);
    m4c_npu::config::MachineConfig::load(config)?;
    let (module, artifact) = match calibrate {
        Some(file) => {
            let arrays = m4c_runtime::read_npz(file)?;
            let feeds = calibration_feeds(graph, &arrays, file)?;
            eprintln!(
                "note: calibrating NPU activation ranges on {} (1 sample)",
                file.display()
            );
            compile(graph, &feeds, request)?
        }
        None => {
            eprintln!("note: calibrating NPU activation ranges on the run's own inputs (1 sample)");
            compile(graph, inputs, request)?
        }
    };
    announce_engines(&module);
    Ok((module, artifact))
}

/// Says on stderr what runs each part of a loaded module: one `note:`
/// with the count per engine, then one per distinct reason a fallback
/// part runs on the interpreter (naming its parts).
pub fn announce_engines(module: &NpuModule) {
    let engines = module.engines();
    let count = |e: PartEngine| engines.iter().filter(|(x, _)| *x == e).count();
    eprintln!(
        "note: npu:{}: {} NPU part(s), {} CPU-fallback part(s) compiled, {} on the interpreter",
        module.config().name,
        count(PartEngine::Npu),
        count(PartEngine::CompiledCpu),
        count(PartEngine::Interpreter)
    );
    for (why, parts) in module.interpreted_parts() {
        match &parts[..] {
            [k] => eprintln!("note: fallback part {k} runs on the reference interpreter: {why}"),
            _ => eprintln!(
                "note: fallback parts {} run on the reference interpreter: {why}",
                parts
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// The arrays of an `.npz` (`file`) for `graph`'s inputs, in graph input
/// order: what calibration runs on. Each must have its input's element
/// type and, where the input's shape is static, that shape.
pub fn calibration_feeds(
    graph: &Graph,
    arrays: &BTreeMap<String, Value>,
    file: &Path,
) -> CliResult<Vec<Value>> {
    let mut feeds = Vec::with_capacity(graph.inputs.len());
    for &i in &graph.inputs {
        let value = graph.value(i);
        let (name, want) = (&value.name, &value.ty);
        let file = file.display();
        let v = super::run::lookup(arrays, name).ok_or_else(|| {
            format!("{file}: no array for input `{name}`: --backend npu calibrates on the inputs, every graph input needs one")
        })?;
        if v.dtype() != want.dtype || want.static_shape().is_some_and(|s| s != v.shape()) {
            return Err(format!(
                "{file}: input `{name}` is {} {:?} but the model expects {want}",
                v.dtype(),
                v.shape()
            )
            .into());
        }
        feeds.push(v.clone());
    }
    Ok(feeds)
}

/// [`prepare`] without the notes: calibrate, compile (fallback parts by
/// the CPU backend), refuse any fallback under `--strict`, load.
pub fn compile(
    graph: &Graph,
    inputs: &[Value],
    request: &NpuRequest,
) -> CliResult<(Arc<NpuModule>, Artifact)> {
    let artifact = compile_artifact(graph, inputs, request)?;
    Ok((load(graph, &artifact, request)?, artifact))
}

/// Calibrates `graph` on one sample, `inputs` (graph input order), and
/// compiles it (fallback parts by the CPU backend), refusing any fallback
/// under `--strict`: the artifact `run` loads and `firmware build` packs.
pub fn compile_artifact(
    graph: &Graph,
    inputs: &[Value],
    request: &NpuRequest,
) -> CliResult<Artifact> {
    let cal = m4c_npu_codegen::calibrate::calibrate(graph, &[inputs.to_vec()])?;
    artifact_calibrated(graph, &cal, request)
}

/// [`compile`] for a graph already calibrated as `cal` (one calibration
/// serves many machines: `npu explore`).
pub fn compile_calibrated(
    graph: &Graph,
    cal: &m4c_npu_codegen::calibrate::Calibration,
    request: &NpuRequest,
) -> CliResult<(Arc<NpuModule>, Artifact)> {
    let artifact = artifact_calibrated(graph, cal, request)?;
    Ok((load(graph, &artifact, request)?, artifact))
}

/// Compiles `graph` calibrated as `cal`, refusing any fallback under
/// `--strict`.
fn artifact_calibrated(
    graph: &Graph,
    cal: &m4c_npu_codegen::calibrate::Calibration,
    request: &NpuRequest,
) -> CliResult<Artifact> {
    let compile = CompileRequest {
        target: request.target.clone(),
        threads: request.threads.max(1),
        ..Default::default()
    };
    let fallback = m4c_backends::npu_fallback();
    let artifact = m4c_npu_codegen::compile_calibrated(graph, cal, &compile, Some(fallback))?;
    if request.strict {
        if let Some(refusal) = strict_refusal(&graph.name, &artifact) {
            return Err(refusal.into());
        }
    }
    Ok(artifact)
}

/// Loads `artifact` (of `graph`) from memory on the NPU device, as a
/// bundle's code is loaded; compiled fallback code on `threads` threads.
fn load(graph: &Graph, artifact: &Artifact, request: &NpuRequest) -> CliResult<Arc<NpuModule>> {
    let entry = CodeEntry {
        cpu: String::new(),
        section: format!("{}.{}", graph.name, artifact.target),
        target: artifact.target.clone(),
    };
    let files: Vec<_> = artifact
        .files
        .iter()
        .filter_map(|f| f.section.map(|k| (k, f.bytes.as_slice())))
        .collect();
    let code = ModuleCode::from_memory("npu", entry, &files)?;
    let threads = request.threads.max(1);
    let mut module = NpuModule::from_sections(&graph.name, &code, Signature::of(graph), threads)?;
    if request.layer_by_layer {
        module.unlink();
    }
    Ok(Arc::new(module))
}

/// What `--strict` says when `artifact` (of model `model`) has fallback
/// nodes: their count and config, then one line per node, `Op `value`:
/// constraint: detail`. `None` when everything is on the NPU.
pub fn strict_refusal(model: &str, artifact: &Artifact) -> Option<String> {
    let nodes = artifact.stats["fallback"].as_array()?;
    if nodes.is_empty() {
        return None;
    }
    let mut s = format!(
        "--strict: {} node(s) of `{model}` would fall back to the CPU on npu:{}:",
        nodes.len(),
        artifact.target
    );
    for n in nodes {
        let field = |k: &str| n[k].as_str().unwrap_or_default().to_string();
        let _ = write!(
            s,
            "\n  {} `{}`: {}",
            field("op"),
            field("value"),
            field("reason")
        );
    }
    Some(s)
}

/// What `m4c bench --backend npu` is given besides the model and its
/// inputs, and writes besides the summary.
#[derive(Default)]
pub struct BenchOutputs<'a> {
    /// `--calibrate`: the calibration sample (else the run's inputs).
    pub calibrate: Option<&'a Path>,
    /// `--json`: the report as JSON instead of the summary.
    pub json: bool,
    /// `--csv`: the per-layer table.
    pub csv: Option<&'a Path>,
    /// `--trace`: the run as a Chrome/Perfetto trace.
    pub trace: Option<&'a Path>,
}

/// `m4c bench MODEL --backend npu[:CONFIG]`: one simulated run, each
/// fallback part timed over `runs` runs (median); each layer's result
/// compared with the float reference (SQNR) and named by its ONNX node
/// (`onnx_nodes`, [`onnx_node_names`]).
pub fn bench(
    graph: &Graph,
    feeds: &[Value],
    request: &NpuRequest,
    runs: usize,
    onnx_nodes: &HashMap<String, String>,
    out: BenchOutputs,
) -> CliResult<i32> {
    let (module, artifact) = prepare(graph, feeds, out.calibrate, request)?;
    let (_, figures, captured) = module.run_capturing(feeds, runs)?;
    let mut r = report(&module, &artifact, figures);
    figures::annotate(&mut r, graph, feeds, &captured, onnx_nodes)?;
    let write = |p: &Path, text: String| {
        std::fs::write(p, text).map_err(|e| format!("{}: {e}", p.display()))
    };
    if let Some(p) = out.csv {
        write(p, csv(&r))?;
    }
    if let Some(p) = out.trace {
        write(p, serde_json::to_string(&trace::events(&r))?)?;
    }
    if out.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", summary(&r));
    }
    Ok(0)
}
