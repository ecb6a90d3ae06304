//! What `m4c bench --backend npu` reports: the summary, the per-layer
//! table (NPU layers and CPU-fallback parts in execution order, each
//! layer with the ONNX node behind it and its quantisation SQNR against
//! the float reference interpreter) and its JSON form.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use m4c_compiler::backend::Artifact;
use m4c_ir::Graph;
use m4c_npu::module::ModulePart;
use m4c_npu_codegen::calibrate::is_mask_sentinel;
use m4c_ops::Value;
use m4c_runtime::exec::npu::{
    LayerFigures, LayerOutput, NpuModule, PartEngine, PartFigures, RunFigures,
};
use serde::{Serialize, Serializer};

use crate::cli::model_args::Model;
use crate::cli::CliResult;

/// What `m4c bench --backend npu` reports (the keys of `--json`).
#[derive(Serialize)]
pub struct NpuReport {
    /// The machine configuration.
    pub config: String,
    /// Its clock, MHz: what turns simulated cycles into time.
    pub clock_mhz: f64,
    /// Simulated NPU cycles of all NPU parts (each part one linked
    /// program, or its layers one after another).
    pub cycles: u64,
    /// How the NPU parts ran: `linked` (each one program: tensors in a
    /// memory plan, feature maps in the feature-map SRAM where they fit),
    /// `layer-by-layer` (`--layer-by-layer`: each layer its own program,
    /// its operands and result in DRAM), or `mixed` (a part could not be
    /// linked: its `parts[].note` says why).
    pub schedule: String,
    /// `cycles` at the config's clock, plus the boundary estimate, ms.
    pub latency_ms: f64,
    /// Matrix-unit MACs / (PEs × NPU cycles).
    pub mac_utilization: f64,
    /// Largest SRAM use of one layer, bytes.
    pub sram_peak_bytes: u64,
    /// DRAM bytes read plus written by all layers.
    pub dram_bytes: u64,
    /// Feature-map SRAM bytes read plus written by all layers (feature
    /// maps kept on chip).
    pub fmap_bytes: u64,
    /// The most feature-map SRAM one part's memory plan uses, bytes.
    pub fmap_peak_bytes: u64,
    /// The machine's feature-map SRAM, bytes.
    pub fmap_capacity_bytes: u64,
    /// The DRAM arenas of the linked parts' tensors (boundary values and
    /// feature maps that did not fit on chip), bytes summed over parts.
    pub arena_bytes: u64,
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
    /// Per NPU layer: simulated figures, the ONNX node, the SQNR.
    pub layers: Vec<LayerRow>,
    /// Per CPU-fallback part: the values it computes, its measured host
    /// time and why it is not on the NPU.
    pub fallback: Vec<FallbackRow>,
}

/// One NPU layer of the report.
#[derive(Serialize)]
pub struct LayerRow {
    /// Its simulated figures.
    #[serde(flatten)]
    pub figures: LayerFigures,
    /// The ONNX node whose output the layer computes (`None`: a value
    /// the optimiser or the NPU compiler made, or an IR model).
    pub onnx_node: Option<String>,
    /// Signal-to-quantisation-noise ratio of the layer's dequantised
    /// int8 result against the float reference interpreter's value from
    /// the same inputs, dB. The NPU's inputs are its own earlier results,
    /// so this is the error accumulated up to this layer. `None` for a
    /// layer that does not complete a value (a multi-layer op's
    /// intermediate, an earlier slice of a split op), for a value the
    /// float graph does not have, or whose reference is all zeros; JSON
    /// writes an exact match as `"inf"`.
    #[serde(serialize_with = "db_or_inf")]
    pub sqnr_db: Option<f64>,
}

/// One CPU-fallback part of the report.
#[derive(Serialize)]
pub struct FallbackRow {
    /// Index in the plan.
    pub part: usize,
    /// The values it computes (its outputs).
    pub values: Vec<String>,
    /// The ONNX nodes behind them (where known).
    pub onnx_nodes: Vec<String>,
    /// What ran it.
    pub engine: PartEngine,
    /// Measured host wall time, ms (median of the timed runs).
    pub host_ms: f64,
    /// Why its nodes are not on the NPU (one line per refused op kind).
    pub reasons: Vec<String>,
}

/// An SQNR for JSON, which has no infinity: an exact match (the only
/// infinite SQNR, [`sqnr_db`]) as `"inf"`.
fn db_or_inf<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(x) if x.is_infinite() => s.serialize_str("inf"),
        Some(x) => s.serialize_f64(*x),
        None => s.serialize_none(),
    }
}

/// The report of one measured run (without ONNX node names or SQNR:
/// [`annotate`] adds them).
pub fn report(module: &NpuModule, artifact: &Artifact, f: RunFigures) -> NpuReport {
    let c = module.config();
    let npu_parts = f.parts.iter().filter(|p| p.engine == PartEngine::Npu);
    let cycles: u64 = npu_parts.clone().map(|p| p.cycles).sum();
    let schedules: Vec<_> = npu_parts.filter_map(|p| p.schedule).collect();
    let schedule = match (
        schedules.iter().all(|s| s.linked),
        schedules.iter().any(|s| s.linked),
    ) {
        (true, _) => "linked",
        (false, true) => "mixed",
        (false, false) => "layer-by-layer",
    };
    let macs: u64 = f.layers.iter().map(|l| l.macs).sum();
    let pes = f64::from(c.array_rows) * f64::from(c.array_cols);
    let ms = |cycles: u64| cycles as f64 / (c.clock_mhz * 1e3);
    let fallback = f
        .parts
        .iter()
        .filter(|p| p.engine != PartEngine::Npu)
        .map(|p| FallbackRow {
            part: p.part,
            values: module
                .fallback_outputs(p.part)
                .into_iter()
                .map(String::from)
                .collect(),
            onnx_nodes: vec![],
            engine: p.engine,
            host_ms: p.seconds * 1e3,
            reasons: match module.plan().parts.get(p.part) {
                Some(ModulePart::Fallback { reasons, .. }) => reasons.clone(),
                _ => vec![],
            },
        })
        .collect();
    NpuReport {
        config: c.name.clone(),
        clock_mhz: c.clock_mhz,
        cycles,
        latency_ms: ms(cycles + f.boundary_cycles),
        mac_utilization: if cycles == 0 {
            0.0
        } else {
            macs as f64 / (pes * cycles as f64)
        },
        sram_peak_bytes: f.layers.iter().map(|l| l.sram_bytes).max().unwrap_or(0),
        dram_bytes: f.layers.iter().map(|l| l.dram_bytes).sum(),
        fmap_bytes: f.layers.iter().map(|l| l.fmap_bytes).sum(),
        schedule: schedule.into(),
        fmap_peak_bytes: schedules
            .iter()
            .map(|s| s.fmap_peak_bytes)
            .max()
            .unwrap_or(0),
        fmap_capacity_bytes: u64::from(c.fmap_sram_bytes),
        arena_bytes: schedules.iter().map(|s| s.arena_bytes).sum(),
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
        layers: f
            .layers
            .into_iter()
            .map(|figures| LayerRow {
                figures,
                onnx_node: None,
                sqnr_db: None,
            })
            .collect(),
        fallback,
    }
}

/// Which ONNX node produced each value of `model`'s graph (by output
/// name; nodes without a name are left out). Empty for an IR model.
pub fn onnx_node_names(model: &Model) -> HashMap<String, String> {
    let Model::Onnx(m) = model else {
        return HashMap::new();
    };
    m.graph()
        .node
        .iter()
        .filter(|n| !n.name.is_empty())
        .flat_map(|n| n.output.iter().map(|o| (o.clone(), n.name.clone())))
        .collect()
}

/// The ONNX node behind IR value `value`: the node with that output, or,
/// for a value the frontend made while lowering one node
/// (`OUTPUT/op`), the node of the longest `OUTPUT` prefix. Values the
/// optimiser made (`opt/...`) have none.
fn onnx_node<'a>(nodes: &'a HashMap<String, String>, value: &str) -> Option<&'a str> {
    if value.starts_with("opt/") {
        return None;
    }
    let mut name = value;
    loop {
        if let Some(n) = nodes.get(name) {
            return Some(n);
        }
        name = &name[..name.rfind('/').filter(|&k| k > 0)?];
    }
}

/// Adds to `r` the ONNX node of each layer and fallback value (`nodes`,
/// [`onnx_node_names`]) and each layer's SQNR: `captured` (aligned with
/// the layers, [`NpuModule::run_capturing`]) against `graph` run on the
/// reference interpreter from `inputs`.
pub fn annotate(
    r: &mut NpuReport,
    graph: &Graph,
    inputs: &[Value],
    captured: &[Option<LayerOutput>],
    nodes: &HashMap<String, String>,
) -> CliResult<()> {
    let wanted: HashSet<&str> = captured.iter().flatten().map(|c| c.name.as_str()).collect();
    let reference = reference_values(graph, inputs, &wanted)?;
    for (row, c) in r.layers.iter_mut().zip(captured) {
        row.onnx_node = onnx_node(nodes, &row.figures.name).map(String::from);
        row.sqnr_db = c
            .as_ref()
            .and_then(|c| sqnr_db(&c.values, reference.get(&c.name)?));
    }
    for f in &mut r.fallback {
        f.onnx_nodes = f
            .values
            .iter()
            .filter_map(|v| onnx_node(nodes, v))
            .map(String::from)
            .collect();
    }
    Ok(())
}

/// The f32 values named in `wanted` as the reference interpreter computes
/// `graph` from `inputs` (graph input order), node by node, flattened
/// (the calibration's walk, `m4c_npu_codegen::calibrate::evaluate`,
/// freeing each value after its last use).
fn reference_values(
    graph: &Graph,
    inputs: &[Value],
    wanted: &HashSet<&str>,
) -> CliResult<HashMap<String, Vec<f32>>> {
    let mut out = HashMap::new();
    m4c_npu_codegen::calibrate::evaluate(graph, inputs, true, &mut |id, v| {
        let name = &graph.value(id).name;
        if let (true, Value::F32(a)) = (wanted.contains(name.as_str()), v) {
            out.insert(name.clone(), a.iter().copied().collect());
        }
    })
    .map_err(|e| format!("the float reference for the layer SQNR: {e}"))?;
    Ok(out)
}

/// `10·log10(Σref² / Σ(q−ref)²)` in dB over the elements whose reference
/// is an ordinary number (mask sentinels and non-finite values are left
/// out); `None` when the lengths differ or the reference is all zeros,
/// `+inf` for an exact match.
pub fn sqnr_db(q: &[f32], reference: &[f32]) -> Option<f64> {
    if q.len() != reference.len() {
        return None;
    }
    let (mut signal, mut noise) = (0.0f64, 0.0f64);
    for (&a, &r) in q.iter().zip(reference) {
        let r = f64::from(r);
        if is_mask_sentinel(r) {
            continue;
        }
        signal += r * r;
        noise += (f64::from(a) - r).powi(2);
    }
    (signal > 0.0).then(|| 10.0 * (signal / noise).log10())
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
    let _ = writeln!(
        s,
        "  fmap traffic      {} B (feature maps on chip; plan peak {} B of {} B)",
        r.fmap_bytes, r.fmap_peak_bytes, r.fmap_capacity_bytes
    );
    let _ = writeln!(
        s,
        "  schedule          {} (DRAM arenas {} B)",
        r.schedule, r.arena_bytes
    );
    let _ = writeln!(s, "  energy            {:.6} mJ", r.energy_mj);
    let _ = writeln!(
        s,
        "  boundary          {} value(s), {} B",
        r.boundary_values, r.boundary_bytes
    );
    let _ = writeln!(s, "  layers            {}", r.layers.len());
    s
}

/// The header of [`csv`].
pub const CSV_HEADER: &str = "layer,onnx_node,placement,kernel,part,tile_rows,cycles,macs,utilization,sram_bytes,dram_bytes,fmap_bytes,result_in,energy_pj,host_ms,sqnr_db,reason";

/// A CSV text cell: quoted, quotes doubled; empty stays empty.
fn cell(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!("\"{}\"", s.replace('"', "\"\""))
    }
}

/// The per-layer table as CSV: NPU layers (simulated figures, SQNR) and
/// CPU-fallback parts (measured host time, reason) in execution order.
pub fn csv(r: &NpuReport) -> String {
    let mut s = format!("{CSV_HEADER}\n");
    for p in &r.parts {
        if p.engine != PartEngine::Npu {
            let Some(f) = r.fallback.iter().find(|f| f.part == p.part) else {
                continue;
            };
            let _ = writeln!(
                s,
                "{},{},cpu,cpu-fallback,{},,,,,,,,,,{:.4},,{}",
                cell(&f.values.join(" ")),
                cell(&f.onnx_nodes.join(" ")),
                f.part,
                f.host_ms,
                cell(&f.reasons.join("; "))
            );
            continue;
        }
        for row in r.layers.iter().filter(|l| l.figures.part == p.part) {
            let l = &row.figures;
            let sqnr = match row.sqnr_db {
                Some(x) if x.is_infinite() => format!("{x}"),
                Some(x) => format!("{x:.2}"),
                None => String::new(),
            };
            let _ = writeln!(
                s,
                "{},{},npu,{},{},{},{},{},{:.4},{},{},{},{},{:.1},,{sqnr},",
                cell(&l.name),
                cell(row.onnx_node.as_deref().unwrap_or_default()),
                l.kernel,
                l.part,
                l.tile_rows,
                l.cycles,
                l.macs,
                l.utilization,
                l.sram_bytes,
                l.dram_bytes,
                l.fmap_bytes,
                l.result_in,
                l.energy_pj
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqnr_is_signal_over_noise_in_db() {
        // Σref² = 1 + 4 = 5, Σerr² = 0.01 + 0.04 = 0.05: ratio 100, 20 dB.
        let db = sqnr_db(&[1.1, 2.2], &[1.0, 2.0]).unwrap();
        assert!((db - 20.0).abs() < 1e-4, "{db}");
        assert_eq!(sqnr_db(&[1.0, 2.0], &[1.0, 2.0]), Some(f64::INFINITY));
        assert_eq!(sqnr_db(&[0.5], &[0.0]), None);
        assert_eq!(sqnr_db(&[0.5], &[0.5, 1.0]), None);
        // A mask sentinel in the reference is left out.
        let db = sqnr_db(&[1.1, -128.0], &[1.0, f32::NEG_INFINITY]).unwrap();
        assert!((db - 20.0).abs() < 1e-3, "{db}");
    }

    #[test]
    fn onnx_nodes_by_output_and_by_lowering_prefix() {
        let nodes: HashMap<String, String> =
            [("/0/Gemm_output_0".to_string(), "/0/Gemm".to_string())].into();
        assert_eq!(onnx_node(&nodes, "/0/Gemm_output_0"), Some("/0/Gemm"));
        assert_eq!(
            onnx_node(&nodes, "/0/Gemm_output_0/matmul"),
            Some("/0/Gemm")
        );
        assert_eq!(onnx_node(&nodes, "/0/Other"), None);
        assert_eq!(onnx_node(&nodes, "opt/0/Gemm_output_0"), None);
    }
}
