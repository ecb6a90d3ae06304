//! `m4c opt`: optimise a model (adapters, LoRA policy, e-graph rewriting,
//! fusion) and print the optimised IR and a report.

use std::path::PathBuf;

use m4c_compiler::opt::{apply_adapters, LoraPolicy, OptOptions, Roofline};
use m4c_compiler::{lower, OnnxModel};

use super::model_args::{DimArgs, ModelPath};
use super::CliResult;

/// Arguments of `m4c opt`.
#[derive(clap::Args)]
pub struct OptArgs {
    /// The ONNX model.
    model: ModelPath,
    /// A PEFT LoRA adapter directory (adapter_config.json +
    /// adapter_model.safetensors) to attach; repeatable.
    #[arg(long = "adapter", value_name = "DIR")]
    adapters: Vec<PathBuf>,
    /// fold: W' = W + s·A·B; keep: factors kept (backbone shared); auto:
    /// the cost model decides per layer.
    #[arg(long, default_value = "auto", value_name = "fold|keep|auto")]
    lora: LoraPolicy,
    /// Cost-model target: `cpu`, or `npu[:PRESET|CONFIG.toml]`.
    #[arg(long, default_value = "cpu")]
    target: String,
    /// Write the optimised IR text here instead of printing it.
    #[arg(short = 'o', long = "output", value_name = "OUT.ir")]
    output: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    dims: DimArgs,
}

/// The roofline of a `--target` name. The NPU's comes from its machine
/// config: peak `2·rows·cols` MACs per cycle, DMA-in bandwidth, the vector
/// unit's pipeline latency as the per-kernel cost.
pub fn target_model(target: &str) -> CliResult<Roofline> {
    let (name, spec) = target.split_once(':').unwrap_or((target, ""));
    match name {
        "cpu" if spec.is_empty() => Ok(Roofline::cpu()),
        "npu" => {
            let spec = if spec.is_empty() { "edge-small" } else { spec };
            let c = m4c_npu::config::MachineConfig::load(spec)?;
            let hz = c.clock_mhz * 1e6;
            Ok(Roofline {
                name: format!("npu:{}", c.name),
                peak_flops: 2.0 * f64::from(c.array_rows) * f64::from(c.array_cols) * hz,
                bandwidth: f64::from(c.dma_in.bytes_per_cycle) * hz,
                launch_ns: f64::from(c.vector_latency_cycles) / hz * 1e9,
            })
        }
        _ => Err(format!("unknown target `{target}` (cpu, npu[:PRESET|CONFIG])").into()),
    }
}

/// Runs `m4c opt`.
pub fn run(args: OptArgs) -> CliResult<i32> {
    let model = OnnxModel::load(&args.model)?;
    let graph = lower(&model, &args.dims.options(Some(1)))?;
    let cost = target_model(&args.target)?;
    let opts = OptOptions {
        lora: args.lora,
        ..Default::default()
    };
    let (optimised, report) = apply_adapters(&graph, &args.adapters, &opts, &cost)?;
    let text = m4c_ir::text::print(&optimised);
    match &args.output {
        Some(path) => std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?,
        None => print!("{text}"),
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    Ok(0)
}
