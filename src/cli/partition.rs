//! `m4c partition`: split models into accelerator sub-graphs and CPU
//! fallback and report coverage, boundary and time (the paper's Fig. 2).
//! For `--target npu[:CONFIG]` the split is the NPU code generator's own,
//! after the optimiser: each model is calibrated, compiled (fallback parts
//! by the CPU backend) and run once on the simulator; the CPU-only time is
//! the whole model, optimised for the CPU, compiled by the CPU backend and
//! run on the same inputs.
//! A model that does not load, lower or compile is a row with its reason.

use std::path::{Path, PathBuf};
use std::time::Instant;

use m4c_compiler::backend::{CompileRequest, Refusal};
use m4c_compiler::partition::{csv, markdown_table, PartitionReport, Times};
use m4c_ir::Graph;
use m4c_npu::config::MachineConfig;
use m4c_ops::Value;

use super::model_args::{load_with_inputs, DimArgs, ModelPath, OptSwitch};
use super::npu_backend::NpuRequest;
use super::progress::Progress;
use super::CliResult;

/// Arguments of `m4c partition`.
#[derive(clap::Args)]
pub struct PartitionArgs {
    /// Models (ONNX, or IR files from `m4c opt -o`). Each runs on
    /// `MODEL.inputs.npz` beside it when that file exists, else on
    /// deterministic synthetic inputs.
    #[arg(required = true)]
    models: Vec<ModelPath>,
    /// Accelerator: `npu[:PRESET|CONFIG.toml]` (default config
    /// edge-small, named in the report; the NPU code generator's own
    /// split, with simulated NPU and measured CPU times), or a registered
    /// backend (`m4c backends`), whose refusals decide (no times).
    #[arg(long, default_value = "npu")]
    target: String,
    #[command(flatten)]
    opt: OptSwitch,
    /// Print JSON instead of the Markdown table.
    #[arg(long)]
    json: bool,
    /// Also write the table as CSV to this file.
    #[arg(long, value_name = "TABLE.csv")]
    csv: Option<PathBuf>,
    /// Refuse any fallback: after the table, exit 2 listing each node
    /// that falls back to the CPU and why (`constraint: detail`).
    #[arg(long)]
    strict: bool,
    /// Timed runs of each CPU figure (median).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    #[command(flatten)]
    dims: DimArgs,
}

/// Runs `m4c partition`. A model that does not load, lower, optimise or
/// compile is a row of its own with the reason; only when no model
/// converts is it an error.
pub fn run(args: PartitionArgs) -> CliResult<i32> {
    let support = super::backend::op_support(&args.target)?;
    let cost = super::opt::target_model(&args.target)?;
    let npu = npu_config(&args.target)?;
    let header = match &npu {
        Some((_, c)) => npu_header(c, args.runs),
        None => format!("Target: {} (its refusals; no times)", support.name()),
    };
    if let Some(out) = &args.csv {
        let inputs: Vec<&Path> = args.models.iter().map(PathBuf::as_path).collect();
        m4c_runtime::outfile::check(out, &inputs, false)?;
    }
    let mut reports = vec![];
    let progress = Progress::bar(args.models.len(), "models");
    for path in &args.models {
        progress.item(path.display().to_string());
        let name = path.file_stem().map_or_else(
            || path.display().to_string(),
            |s| s.to_string_lossy().into_owned(),
        );
        let row = match &npu {
            Some((spec, _)) => npu_row(&args, path, &name, support.name(), spec, &cost),
            None => load_with_inputs(path, &args.dims).and_then(|(model, lowered, ..)| {
                let graph = args.opt.apply(&model, lowered, &cost, false)?;
                Ok(PartitionReport::of(&name, &graph, support.as_ref()))
            }),
        };
        reports.push(row.unwrap_or_else(|e| {
            let reason = e.to_string().replace('\n', " ");
            PartitionReport::failed(&name, support.name(), reason)
        }));
        progress.inc();
    }
    drop(progress);
    if reports.iter().all(|r| r.error.is_some()) {
        let first = reports
            .first()
            .and_then(|r| r.error.as_deref())
            .unwrap_or("");
        return Err(format!(
            "no model could be converted ({} given); first: {first}",
            reports.len()
        )
        .into());
    }
    if let Some(out) = &args.csv {
        let inputs: Vec<&Path> = args.models.iter().map(PathBuf::as_path).collect();
        m4c_runtime::outfile::write(out, &inputs, csv(&reports).as_bytes())?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        print!("{}", markdown_table(&header, &reports));
    }
    if args.strict {
        if let Some(refusal) = strict_refusal(&reports) {
            return Err(refusal.into());
        }
    }
    Ok(0)
}

/// The NPU config of `--target npu[:SPEC]` (the spec as given and the
/// loaded machine), `None` for other targets.
fn npu_config(target: &str) -> CliResult<Option<(Option<String>, MachineConfig)>> {
    let (name, spec) = target.split_once(':').unwrap_or((target, ""));
    if name != "npu" {
        return Ok(None);
    }
    let spec = (!spec.is_empty()).then(|| spec.to_string());
    let config = MachineConfig::load(spec.as_deref().unwrap_or(m4c_npu_codegen::DEFAULT_TARGET))?;
    Ok(Some((spec, config)))
}

/// The report's header: the machine, and how each time was obtained.
fn npu_header(c: &MachineConfig, runs: usize) -> String {
    format!(
        "Target: npu:{} ({}x{} MAC array, {} vector lanes, {} MHz). Split: the NPU code \
         generator's, after the optimiser. Accel time: simulated cycles at the clock; boundary: \
         quantise/dequantise estimated at the config's rates; CPU fallback and CPU-only (the \
         model optimised for the CPU): host wall time of the CPU backend's compiled code, \
         median of {runs} runs, on MODEL.inputs.npz or synthetic inputs.",
        c.name, c.array_rows, c.array_cols, c.vector_lanes, c.clock_mhz
    )
}

/// The row of model `path` on the NPU (`spec`; `cost`: its roofline):
/// optimised for it, compiled, run once on the simulator with the
/// fallback parts timed; and the CPU-only time of the model optimised for
/// the CPU.
fn npu_row(
    args: &PartitionArgs,
    path: &Path,
    name: &str,
    target: &str,
    spec: &Option<String>,
    cost: &m4c_compiler::opt::Roofline,
) -> CliResult<PartitionReport> {
    let (model, lowered, feeds, inputs) = load_with_inputs(path, &args.dims)?;
    let graph = args.opt.apply(&model, lowered.clone(), cost, false)?;
    let request = NpuRequest {
        target: spec.clone(),
        threads: 1,
        strict: false,
        layer_by_layer: false,
    };
    let (module, artifact) = super::npu_backend::compile(&graph, &feeds, &request)?;
    let (_, figures) = module.run_measured(&feeds, args.runs)?;
    let fallback: Vec<Refusal> = artifact.stats["fallback"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| {
            let i = usize::try_from(n["node"].as_u64()?).ok()?;
            Some(Refusal {
                node: i,
                value: n["value"].as_str()?.to_string(),
                op: graph.nodes.get(i)?.op.kind().name(),
                reason: n["reason"].as_str()?.to_string(),
            })
        })
        .collect();
    let mut on_npu = vec![true; graph.nodes.len()];
    for r in &fallback {
        on_npu[r.node] = false;
    }
    let count = |key: &str| artifact.stats[key].as_u64().unwrap_or(0) as usize;
    let (npu_parts, fallback_parts) = (count("npu_parts"), count("fallback_parts"));
    let mut report =
        PartitionReport::placed(name, target, &graph, &on_npu, npu_parts, fallback_parts);
    report.fallback = fallback;
    let cpu = m4c_backends::npu_fallback();
    let cpu_only = args
        .opt
        .apply(&model, lowered, &cpu.cost_model(), false)
        .map_err(|e| e.to_string())
        .and_then(|g| cpu_only_ms(name, g, &feeds, args.runs));
    let c = module.config();
    let ms = |cycles: u64| cycles as f64 / (c.clock_mhz * 1e3);
    let cycles = figures.layers.iter().map(|l| l.cycles).sum();
    report.time = Some(Times {
        accelerator_cycles: cycles,
        accelerator_ms: ms(cycles),
        boundary_ms: ms(figures.boundary_cycles),
        fallback_ms: figures.fallback_seconds * 1e3,
        fallback_interpreted: figures.fallback_parts - figures.fallback_compiled,
        cpu_only_error: cpu_only.as_ref().err().cloned(),
        cpu_only_ms: cpu_only.ok(),
        runs: args.runs,
        inputs,
    });
    Ok(report)
}

/// The median host time of `graph` (optimised for the CPU) compiled
/// whole by the CPU backend, ms (after one warm-up run), or why there is
/// none.
fn cpu_only_ms(name: &str, graph: Graph, feeds: &[Value], runs: usize) -> Result<f64, String> {
    let cpu = m4c_backends::npu_fallback();
    let request = CompileRequest {
        threads: 1,
        ..Default::default()
    };
    let (executor, _) =
        m4c_backends::prepare(cpu, name, graph, &request).map_err(|e| e.to_string())?;
    executor.run(feeds).map_err(|e| e.to_string())?;
    let mut times = (0..runs.max(1))
        .map(|_| {
            let started = Instant::now();
            executor
                .run(feeds)
                .map(|_| started.elapsed().as_secs_f64() * 1e3)
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// What `--strict` says when any model has nodes on the CPU: per model
/// the nodes and why. `None` when every converted model is wholly on the
/// accelerator.
fn strict_refusal(reports: &[PartitionReport]) -> Option<String> {
    let partial: Vec<&PartitionReport> = reports
        .iter()
        .filter(|r| r.error.is_none() && r.ops_on_accelerator < r.ops)
        .collect();
    if partial.is_empty() {
        return None;
    }
    let mut s = format!(
        "--strict: {} model(s) would fall back to the CPU on {}:",
        partial.len(),
        partial[0].target
    );
    for r in partial {
        s += &format!(
            "\n  {} ({} node(s)):",
            r.model,
            r.ops - r.ops_on_accelerator
        );
        for n in &r.fallback {
            s += &format!("\n    {n}");
        }
    }
    Some(s)
}
