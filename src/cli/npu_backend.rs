//! `--backend npu[:CONFIG]` for `run` and `bench`: the float graph is
//! calibrated on the run's own inputs (announced with one `note:` line),
//! compiled by `m4c-npu-codegen` into NPU parts and CPU-fallback parts
//! (the fallback compiled by the CPU backend, `m4c_backends::npu_fallback`),
//! and loaded on the runtime's `npu` device (the simulator; the fallback
//! through the CPU device); `bench` prints what was measured. `--strict`
//! refuses a model with any fallback, listing what would fall back.
//! `m4c firmware build --backend npu` compiles each module the same way
//! ([`compile_artifact`], calibrated on its `--calibrate` data) and `m4c
//! run M4.fw` reports the engines of the loaded parts as `run` does
//! ([`announce_engines`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use m4c_compiler::backend::{Artifact, CompileRequest};
use m4c_ir::Graph;
use m4c_ops::Value;
use m4c_runtime::bundle::format::CodeEntry;
use m4c_runtime::bundle::ModuleCode;
use m4c_runtime::exec::npu::{NpuModule, PartEngine, PartFigures, RunFigures};
use m4c_runtime::exec::Signature;
use serde::Serialize;

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
}

/// Calibrates `graph` on `inputs` (graph input order, announced with a
/// `note:` line), compiles it and loads it on the simulated NPU.
pub fn prepare(
    graph: &Graph,
    inputs: &[Value],
    request: &NpuRequest,
) -> CliResult<(Arc<NpuModule>, Artifact)> {
    let config = request
        .target
        .as_deref()
        .unwrap_or(m4c_npu_codegen::DEFAULT_TARGET);
    m4c_npu::config::MachineConfig::load(config)?;
    eprintln!("note: calibrating NPU activation ranges on the run's own inputs (1 sample)");
    let (module, artifact) = compile(graph, inputs, request)?;
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
    Ok((load(graph, &artifact, request.threads)?, artifact))
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
    Ok((load(graph, &artifact, request.threads)?, artifact))
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
fn load(graph: &Graph, artifact: &Artifact, threads: usize) -> CliResult<Arc<NpuModule>> {
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
    let module =
        NpuModule::from_sections(&graph.name, &code, Signature::of(graph), threads.max(1))?;
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

/// What `m4c bench --backend npu` reports (the keys of `--json`).
#[derive(Serialize)]
pub struct NpuReport {
    /// The machine configuration.
    pub config: String,
    /// Simulated NPU cycles of all layers (layers run one after another).
    pub cycles: u64,
    /// `cycles` at the config's clock, plus the boundary estimate, ms.
    pub latency_ms: f64,
    /// Matrix-unit MACs / (PEs × NPU cycles).
    pub mac_utilization: f64,
    /// Largest SRAM use of one layer, bytes.
    pub sram_peak_bytes: u64,
    /// DRAM bytes read plus written by all layers.
    pub dram_bytes: u64,
    /// Simulated energy of all layers, mJ.
    pub energy_mj: f64,
    /// NPU time (simulated), ms.
    pub npu_ms: f64,
    /// CPU-fallback time, ms: host wall time of the fallback parts
    /// (each the median of its timed runs), compiled CPU code except the
    /// parts `parts` marks `interpreter`.
    pub fallback_ms: f64,
    /// Values quantised into or dequantised out of NPU parts.
    pub boundary_values: usize,
    /// Bytes of those conversions (int8 side).
    pub boundary_bytes: u64,
    /// Their estimated time (one vector pass and one DMA transfer), ms.
    pub boundary_ms: f64,
    /// NPU parts.
    pub npu_parts: u64,
    /// CPU-fallback parts run.
    pub fallback_parts: usize,
    /// Of those, the parts run by the CPU backend's compiled code.
    pub fallback_compiled: usize,
    /// Every part: its engine (`npu`, `compiled_cpu`, `interpreter` with
    /// the reason), simulated cycles or measured seconds.
    pub parts: Vec<PartFigures>,
    /// Per-layer figures (simulated).
    pub layers: Vec<m4c_runtime::exec::npu::LayerFigures>,
}

/// The report of one measured run.
pub fn report(module: &NpuModule, artifact: &Artifact, f: RunFigures) -> NpuReport {
    let c = module.config();
    let cycles: u64 = f.layers.iter().map(|l| l.cycles).sum();
    let macs: u64 = f.layers.iter().map(|l| l.macs).sum();
    let pes = f64::from(c.array_rows) * f64::from(c.array_cols);
    let ms = |cycles: u64| cycles as f64 / (c.clock_mhz * 1e3);
    NpuReport {
        config: c.name.clone(),
        cycles,
        latency_ms: ms(cycles + f.boundary_cycles),
        mac_utilization: if cycles == 0 {
            0.0
        } else {
            macs as f64 / (pes * cycles as f64)
        },
        sram_peak_bytes: f.layers.iter().map(|l| l.sram_bytes).max().unwrap_or(0),
        dram_bytes: f.layers.iter().map(|l| l.dram_bytes).sum(),
        energy_mj: f.layers.iter().map(|l| l.energy_pj).sum::<f64>() * 1e-9,
        npu_ms: ms(cycles),
        fallback_ms: f.fallback_seconds * 1e3,
        boundary_values: f.boundary_values,
        boundary_bytes: f.boundary_bytes,
        boundary_ms: ms(f.boundary_cycles),
        npu_parts: artifact.stats["npu_parts"].as_u64().unwrap_or(0),
        fallback_parts: f.fallback_parts,
        fallback_compiled: f.fallback_compiled,
        parts: f.parts,
        layers: f.layers,
    }
}

/// The summary lines of a report.
pub fn summary(r: &NpuReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "npu:{}: {} NPU part(s), {} fallback part(s) ({} compiled CPU, {} interpreter)",
        r.config,
        r.npu_parts,
        r.fallback_parts,
        r.fallback_compiled,
        r.fallback_parts - r.fallback_compiled
    );
    let _ = writeln!(s, "  cycles            {}", r.cycles);
    let _ = writeln!(
        s,
        "  latency           {:.4} ms (NPU {:.4} ms simulated + boundary {:.4} ms estimated)",
        r.latency_ms, r.npu_ms, r.boundary_ms
    );
    let _ = writeln!(
        s,
        "  CPU fallback      {:.4} ms (host, measured)",
        r.fallback_ms
    );
    let _ = writeln!(s, "  MAC utilisation   {:.2} %", 100.0 * r.mac_utilization);
    let _ = writeln!(s, "  SRAM peak         {} B", r.sram_peak_bytes);
    let _ = writeln!(s, "  DRAM traffic      {} B", r.dram_bytes);
    let _ = writeln!(s, "  energy            {:.6} mJ", r.energy_mj);
    let _ = writeln!(
        s,
        "  boundary          {} value(s), {} B",
        r.boundary_values, r.boundary_bytes
    );
    let _ = writeln!(s, "  layers            {}", r.layers.len());
    s
}

/// The per-layer table as CSV (every number simulated).
pub fn csv(r: &NpuReport) -> String {
    let mut s =
        String::from("layer,kernel,part,cycles,macs,utilization,sram_bytes,dram_bytes,energy_pj\n");
    for l in &r.layers {
        let name = l.name.replace('"', "\"\"");
        let _ = writeln!(
            s,
            "\"{name}\",{},{},{},{},{:.4},{},{},{:.1}",
            l.kernel,
            l.part,
            l.cycles,
            l.macs,
            l.utilization,
            l.sram_bytes,
            l.dram_bytes,
            l.energy_pj
        );
    }
    s
}

/// `m4c bench MODEL --backend npu[:CONFIG]`: one simulated run, each
/// fallback part timed over `runs` runs (median).
pub fn bench(
    graph: &Graph,
    feeds: &[Value],
    request: &NpuRequest,
    runs: usize,
    json: bool,
    csv_path: Option<&Path>,
) -> CliResult<i32> {
    let (module, artifact) = prepare(graph, feeds, request)?;
    let (_, figures) = module.run_measured(feeds, runs)?;
    let r = report(&module, &artifact, figures);
    if let Some(p) = csv_path {
        std::fs::write(p, csv(&r)).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", summary(&r));
    }
    Ok(0)
}
