//! `m4c opt`: optimise a model (adapters, LoRA policy, e-graph rewriting,
//! fusion) and print the optimised IR and a report.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use m4c_compiler::opt::{apply_adapters, Limits, LoraPolicy, OptOptions, Roofline, Scheduler};
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
    /// Cost-model target: `cpu` (this machine, measured), `cpu-nominal`, or
    /// `npu[:PRESET|CONFIG.toml]` (from the machine config).
    #[arg(long, default_value = "cpu")]
    target: String,
    /// Write the optimised IR text here instead of printing it.
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
    /// Graph nodes per e-graph region.
    #[arg(long, value_name = "N", default_value_t = Limits::default().region_nodes)]
    region_nodes: usize,
    #[command(flatten)]
    dims: DimArgs,
}

/// The roofline of a `--target` name:
///
/// - `cpu`: this machine, measured once per process: the CPU backend's
///   FP32 FMA peak probe (clock × FMA units × lanes × 2) for MatMul/Conv,
///   clock × FMA units × lanes for the other ops, a streaming copy for the
///   bandwidth; the per-kernel cost stays the nominal 1 µs (not measured);
/// - `cpu-nominal`: [`Roofline::cpu`], fixed figures (reproducible);
/// - `npu[:PRESET|CONFIG]`: from the machine config: `2·rows·cols` MACs
///   per cycle, `vector_lanes` element ops per cycle, the DRAM bandwidth the
///   DMA engines share (or DMA-in's own), the DMA-in latency per kernel.
pub fn target_model(target: &str) -> CliResult<Roofline> {
    let (name, spec) = target.split_once(':').unwrap_or((target, ""));
    match name {
        "cpu" if spec.is_empty() => Ok(measured_cpu()?),
        "cpu-nominal" if spec.is_empty() => Ok(Roofline::cpu()),
        "npu" => {
            let spec = if spec.is_empty() { "edge-small" } else { spec };
            let c = m4c_npu::config::MachineConfig::load(spec)?;
            let hz = c.clock_mhz * 1e6;
            let dram = c.dram_bytes_per_cycle.unwrap_or(c.dma_in.bytes_per_cycle);
            Ok(Roofline {
                name: format!("npu:{}", c.name),
                peak_flops: 2.0 * f64::from(c.array_rows) * f64::from(c.array_cols) * hz,
                vector_flops: f64::from(c.vector_lanes) * hz,
                bandwidth: f64::from(dram) * hz,
                launch_ns: f64::from(c.dma_in.latency_cycles) / hz * 1e9,
                source: format!(
                    "config: {}x{} array, {} vector lanes, {} B/cycle, {} MHz",
                    c.array_rows, c.array_cols, c.vector_lanes, dram, c.clock_mhz
                ),
            })
        }
        _ => {
            Err(format!("unknown target `{target}` (cpu, cpu-nominal, npu[:PRESET|CONFIG])").into())
        }
    }
}

/// For the `cpu` targets, the CPU backend's kernels for this host: the
/// report's arena is then the one `--backend cpu` allocates.
fn cpu_scheduler(target: &str) -> Option<Arc<dyn Scheduler>> {
    if !matches!(target, "cpu" | "cpu-nominal") {
        return None;
    }
    let target = m4c_cpu_codegen::Target::parse(None, None).ok()?;
    Some(Arc::new(m4c_cpu_codegen::CpuScheduler { target }))
}

/// This machine's roofline, measured on first use (about 0.2 s).
fn measured_cpu() -> Result<Roofline, String> {
    static CPU: OnceLock<Result<Roofline, String>> = OnceLock::new();
    CPU.get_or_init(|| {
        let target = m4c_cpu_codegen::Target::parse(None, None).map_err(|e| e.to_string())?;
        let peak = m4c_cpu_codegen::measure_peak(&target)
            .map_err(|e| format!("{e} (use --target cpu-nominal)"))?;
        let bandwidth = copy_bandwidth();
        let vector = peak.clock_ghz * 1e9 * peak.fma_units * peak.lanes as f64;
        Ok(Roofline {
            name: "cpu".into(),
            peak_flops: peak.peak_gflops * 1e9,
            vector_flops: vector,
            bandwidth,
            launch_ns: Roofline::cpu().launch_ns,
            source: format!(
                "measured: {:.2} GHz x {} FMA/cycle x {} lanes, copy bandwidth; launch nominal",
                peak.clock_ghz, peak.fma_units, peak.lanes
            ),
        })
    })
    .clone()
}

/// Bytes per second read plus written by the fastest of five copies of a
/// 64 MiB buffer (larger than the last-level caches of the machines this
/// runs on).
fn copy_bandwidth() -> f64 {
    let n = 16 << 20;
    let src = vec![1.0f32; n];
    let mut dst = vec![0.0f32; n];
    let fastest = (0..5)
        .map(|_| {
            let t = Instant::now();
            dst.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&mut dst);
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    (2 * n * 4) as f64 / fastest
}

/// Runs `m4c opt`.
pub fn run(args: OptArgs) -> CliResult<i32> {
    let model = OnnxModel::load(&args.model)?;
    let mut graph = lower(&model, &args.dims.options(Some(1)))?;
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
        scheduler: cpu_scheduler(&args.target),
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
