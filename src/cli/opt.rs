//! `m4c opt`: optimise a model (adapters, LoRA policy, e-graph rewriting,
//! fusion) and print the optimised IR and a report.

use std::path::PathBuf;

use m4c_compiler::opt::{apply_adapters, Limits, LoraPolicy, OptOptions, Roofline};

use super::model_args::{DimArgs, Model, ModelPath};
use super::CliResult;

/// Arguments of `m4c opt`.
#[derive(clap::Args)]
pub struct OptArgs {
    /// The ONNX model (or an IR file, optimised again).
    model: ModelPath,
    /// A PEFT LoRA adapter directory (adapter_config.json +
    /// adapter_model.safetensors) to attach; repeatable.
    #[arg(long = "adapter", value_name = "DIR")]
    adapters: Vec<PathBuf>,
    /// fold: W' = W + s·A·B; keep: factors kept (backbone shared); auto:
    /// the cost model decides per layer.
    #[arg(long, default_value = "auto", value_name = "fold|keep|auto")]
    lora: LoraPolicy,
    /// Cost-model target: a registered backend (`cpu`: this machine,
    /// measured once and cached; see `m4c backends`), `cpu-nominal`, or
    /// `npu[:PRESET|CONFIG.toml]` (from the machine config).
    #[arg(long, default_value = "cpu")]
    target: String,
    /// Write the optimised IR here instead of printing it (large weights
    /// go to OUT.ir.weights beside it); every command that takes a model
    /// takes OUT.ir.
    #[arg(short = 'o', long = "output", value_name = "OUT.ir")]
    output: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Expand Softmax, Norm and GELU into primitives first
    /// (`m4c_ir::decompose`), as an exporter that spells them out writes
    /// them: shows what recognition gives back.
    #[arg(long)]
    decompose: bool,
    /// Keep every MatMul a LoRA adapter can attach to (no horizontal
    /// fusion of q/k/v projections): for IR that goes into a firmware
    /// which apps adapt later (`firmware build` does this itself).
    #[arg(long)]
    keep_adapter_sites: bool,
    /// Graph nodes per e-graph region.
    #[arg(long, value_name = "N", default_value_t = Limits::default().region_nodes)]
    region_nodes: usize,
    #[command(flatten)]
    dims: DimArgs,
}

/// The roofline of a `--target` name:
///
/// - a registered backend's name (`cpu`, `reference`): its cost model —
///   for `cpu` this machine's FP32 FMA peak and copy bandwidth, measured
///   once per host and cached, so decisions are reproducible;
/// - `cpu-nominal`: [`Roofline::cpu`], fixed figures;
/// - `npu[:PRESET|CONFIG]`: from the machine config: `2·rows·cols` MACs
///   per cycle, `vector_lanes` element ops per cycle, the DRAM bandwidth the
///   DMA engines share (or DMA-in's own), the DMA-in latency per kernel.
pub fn target_model(target: &str) -> CliResult<Roofline> {
    let (name, spec) = target.split_once(':').unwrap_or((target, ""));
    match name {
        "cpu-nominal" if spec.is_empty() => Ok(Roofline::cpu()),
        "npu" => {
            let spec = if spec.is_empty() { "edge-small" } else { spec };
            let c = m4c_npu::config::MachineConfig::load(spec)?;
            Ok(m4c_npu_codegen::roofline(&c))
        }
        _ if spec.is_empty() => match m4c_backends::lookup(name) {
            Ok(backend) => Ok(backend.cost_model()),
            Err(_) => Err(format!(
                "unknown target `{target}` (a backend: {}; cpu-nominal, npu[:PRESET|CONFIG])",
                m4c_backends::names().join(", ")
            )
            .into()),
        },
        _ => Err(format!(
            "unknown target `{target}` (a backend, cpu-nominal, npu[:PRESET|CONFIG])"
        )
        .into()),
    }
}

/// The kernel schedule the report's memory plan follows: the target
/// backend's (`cpu-nominal` plans with the CPU backend's kernels too), so
/// that the reported arena is the one `--backend` allocates.
fn scheduler(target: &str) -> Option<std::sync::Arc<dyn m4c_compiler::opt::Scheduler>> {
    let name = if target == "cpu-nominal" {
        "cpu"
    } else {
        target
    };
    m4c_backends::lookup(name).ok()?.scheduler()
}

/// Runs `m4c opt`.
pub fn run(args: OptArgs) -> CliResult<i32> {
    let mut inputs = vec![args.model.clone()];
    if m4c_compiler::ir_file::is_ir_file(&args.model) {
        inputs.push(m4c_compiler::ir_file::weights_path(&args.model));
    }
    inputs.extend(args.adapters.iter().cloned());
    let inputs: Vec<&std::path::Path> = inputs.iter().map(PathBuf::as_path).collect();
    if let Some(out) = &args.output {
        m4c_runtime::outfile::check(out, &inputs, false)?;
        let sidecar = m4c_compiler::ir_file::weights_path(out);
        m4c_runtime::outfile::check(&sidecar, &inputs, false)?;
    }
    let model = Model::open(&args.model)?;
    let mut graph = model.lower(&args.dims.options(&model, Some(1))?)?;
    if args.decompose {
        graph = m4c_ir::decompose(&graph)?;
    }
    let cost = target_model(&args.target)?;
    let opts = OptOptions {
        lora: args.lora,
        limits: Limits {
            region_nodes: args.region_nodes,
            ..Default::default()
        },
        keep_adapter_sites: args.keep_adapter_sites,
        scheduler: scheduler(&args.target),
    };
    let progress = super::progress::Progress::spinner("optimising");
    let (optimised, report) = apply_adapters(&graph, &args.adapters, &opts, &cost)?;
    drop(progress);
    match &args.output {
        Some(path) => m4c_compiler::ir_file::save(path, &inputs, &optimised)?,
        None => print!("{}", m4c_ir::text::print(&optimised)),
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    Ok(0)
}
