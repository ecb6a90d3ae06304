//! `--backend npu[:CONFIG]` for `run` and `bench`: the float graph is
//! calibrated on the run's own inputs (announced with one `note:` line),
//! compiled by `m4c-npu-codegen` into NPU parts and CPU-fallback parts,
//! and loaded on the runtime's `npu` device (the simulator); `bench`
//! prints what the simulator measured.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use m4c_compiler::backend::{Artifact, CompileRequest};
use m4c_ir::Graph;
use m4c_ops::Value;
use m4c_runtime::bundle::format::CodeEntry;
use m4c_runtime::bundle::ModuleCode;
use m4c_runtime::exec::npu::{NpuModule, RunFigures};
use m4c_runtime::exec::Signature;
use serde::Serialize;

use super::CliResult;

/// Calibrates `graph` on `inputs` (graph input order), compiles it for
/// `target` and loads it on the simulated NPU.
pub fn prepare(
    graph: &Graph,
    inputs: &[Value],
    target: Option<String>,
) -> CliResult<(Arc<NpuModule>, Artifact)> {
    let config = target.as_deref().unwrap_or(m4c_npu_codegen::DEFAULT_TARGET);
    m4c_npu::config::MachineConfig::load(config)?;
    eprintln!("note: calibrating NPU activation ranges on the run's own inputs (1 sample)");
    let cal = m4c_npu_codegen::calibrate::calibrate(graph, &[inputs.to_vec()])?;
    compile_and_load(graph, &cal, target)
}

/// Compiles `graph`, calibrated as `cal`, for `target` and loads it on the
/// simulated NPU (one calibration serves many machines: `npu explore`).
pub fn compile_and_load(
    graph: &Graph,
    cal: &m4c_npu_codegen::calibrate::Calibration,
    target: Option<String>,
) -> CliResult<(Arc<NpuModule>, Artifact)> {
    let request = CompileRequest {
        target,
        ..Default::default()
    };
    let artifact = m4c_npu_codegen::compile_calibrated(graph, cal, &request)?;
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
    let module = NpuModule::from_sections(&graph.name, &code, Signature::of(graph))?;
    Ok((Arc::new(module), artifact))
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
    /// CPU-fallback time (host wall time of the reference interpreter), ms.
    pub fallback_ms: f64,
    /// Values quantised into or dequantised out of NPU parts.
    pub boundary_values: usize,
    /// Bytes of those conversions (int8 side).
    pub boundary_bytes: u64,
    /// Their estimated time (one vector pass and one DMA transfer), ms.
    pub boundary_ms: f64,
    /// NPU parts.
    pub npu_parts: u64,
    /// CPU-fallback parts run (reference interpreter).
    pub fallback_parts: usize,
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
        layers: f.layers,
    }
}

/// The summary lines of a report.
pub fn summary(r: &NpuReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "npu:{}: {} NPU part(s), {} fallback part(s) (reference interpreter)",
        r.config, r.npu_parts, r.fallback_parts
    );
    let _ = writeln!(s, "  cycles            {}", r.cycles);
    let _ = writeln!(
        s,
        "  latency           {:.4} ms (NPU {:.4} ms simulated + boundary {:.4} ms estimated)",
        r.latency_ms, r.npu_ms, r.boundary_ms
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

/// `m4c bench MODEL --backend npu[:CONFIG]`: one simulated run.
pub fn bench(
    graph: &Graph,
    feeds: &[Value],
    target: Option<String>,
    json: bool,
    csv_path: Option<&Path>,
) -> CliResult<i32> {
    let (module, artifact) = prepare(graph, feeds, target)?;
    let (_, figures) = module.run_measured(feeds)?;
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
