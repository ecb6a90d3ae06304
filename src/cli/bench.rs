//! `m4c bench ...`: performance measurements (never pass/fail tests).

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use m4c_compiler::{lower, OnnxModel};
use m4c_cpu_codegen::{bench_gemm, compile_graph, CompileOptions, GemmBenchConfig, Target};
use m4c_ir::{DType, Graph, Tensor};
use m4c_ops::{run_graph, Value};
use m4c_runtime::read_npz;
use serde::Serialize;

use super::model_args::DimArgs;
use super::run::lookup;
use super::CliResult;

/// Arguments of `m4c bench`: either `m4c bench gemm ...` or
/// `m4c bench MODEL.onnx --backend cpu|reference ...`.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: Option<BenchCommand>,
    #[command(flatten)]
    model: ModelArgs,
}

/// The backend a model benchmark runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Backend {
    /// Code compiled by the CPU backend (LLVM).
    Cpu,
    /// The reference interpreter.
    Reference,
}

#[derive(clap::Args)]
struct ModelArgs {
    /// The ONNX model to time end to end.
    model: Option<PathBuf>,
    /// Which backend runs the model.
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    backend: Backend,
    /// Inputs as an .npz keyed by the model's input names; without it the
    /// inputs are deterministic pseudo-random values (zeros for integers).
    #[arg(long, value_name = "IN.npz")]
    inputs: Option<PathBuf>,
    /// Threads (CPU backend).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Code-generation target (CPU backend): host, x86_64, x86_64-avx512, x86_64-avx2.
    #[arg(long)]
    target: Option<String>,
    /// LLVM CPU name to tune for (validated), e.g. znver4.
    #[arg(long)]
    cpu: Option<String>,
    /// Timed runs at least (more are made until 2 s have passed, at most 1000).
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Also time one run kernel by kernel (CPU backend) and print the time
    /// per kernel kind.
    #[arg(long)]
    profile: bool,
    #[command(flatten)]
    dims: DimArgs,
}

/// What `m4c bench MODEL` reports (the keys of `--json`).
#[derive(Serialize)]
struct ModelReport {
    model: String,
    backend: Backend,
    threads: usize,
    runs: usize,
    /// Median wall time of one inference, milliseconds.
    median_ms: f64,
    /// Fastest run, milliseconds.
    min_ms: f64,
    /// Frontend lowering time, milliseconds.
    lower_ms: f64,
    /// Code generation + optimisation + linking + loading (CPU backend;
    /// 0 for the interpreter), milliseconds.
    compile_ms: f64,
    /// The CPU backend's compile figures (arena peak vs naive, kernels).
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu: Option<m4c_cpu_codegen::CompileStats>,
}

#[derive(clap::Subcommand)]
enum BenchCommand {
    /// f32 GEMM C[m×n] = A[m×k]·B[k×n] on the CPU backend: median GFLOP/s
    /// and the fraction of the measured FP32 FMA peak.
    Gemm(GemmArgs),
}

#[derive(clap::Args)]
struct GemmArgs {
    /// Rows of A and C.
    #[arg(long)]
    m: usize,
    /// Columns of A, rows of B.
    #[arg(long)]
    k: usize,
    /// Columns of B and C.
    #[arg(long)]
    n: usize,
    /// Threads the GEMM is split over.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Code-generation target: host, x86_64, x86_64-avx512, x86_64-avx2.
    #[arg(long)]
    target: Option<String>,
    /// LLVM CPU name to tune for (validated), e.g. znver4.
    #[arg(long)]
    cpu: Option<String>,
    /// Timed runs at least (more are made until 1 s has passed).
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `m4c bench ...`; returns the exit code.
pub fn run(args: BenchArgs) -> CliResult<i32> {
    match args.command {
        Some(BenchCommand::Gemm(gemm_args)) => gemm(gemm_args),
        None => model(args.model),
    }
}

/// Lowers the model, prepares its inputs, and times repeated inferences.
fn model(args: ModelArgs) -> CliResult<i32> {
    let path = args
        .model
        .clone()
        .ok_or("expected `m4c bench gemm ...` or `m4c bench MODEL.onnx`")?;
    let onnx = OnnxModel::load(&path)?;
    let lower_start = Instant::now();
    let mut opts = args.dims.options(Some(1));
    let proto = onnx.graph();
    let inits: HashSet<&str> = proto.initializer.iter().map(|t| t.name.as_str()).collect();
    let names: Vec<String> = proto
        .input
        .iter()
        .filter(|i| !inits.contains(i.name.as_str()))
        .map(|i| i.name.clone())
        .collect();
    let arrays = match &args.inputs {
        Some(file) => Some(read_npz(file)?),
        None => None,
    };
    let mut given = Vec::new();
    if let (Some(arrays), Some(file)) = (&arrays, &args.inputs) {
        for name in &names {
            let v = lookup(arrays, name)
                .ok_or_else(|| format!("{}: no array for model input '{name}'", file.display()))?;
            opts.input_shapes.insert(name.clone(), v.shape().to_vec());
            given.push(v.clone());
        }
    }
    let graph = lower(&onnx, &opts)?;
    let lower_ms = lower_start.elapsed().as_secs_f64() * 1e3;
    let feeds: Vec<Value> = if given.is_empty() {
        synthetic_inputs(&graph)?
    } else {
        given
    };
    let min_runs = args.runs.max(1);
    let (times, compile_ms, cpu) = match args.backend {
        Backend::Reference => {
            let times = time_runs(min_runs, || {
                run_graph(&graph, &feeds)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })?;
            (times, 0.0, None)
        }
        Backend::Cpu => {
            let options = CompileOptions {
                target: Target::parse(args.target.as_deref(), args.cpu.as_deref())?,
                threads: args.threads,
            };
            let start = Instant::now();
            let mut compiled = compile_graph(&graph, &options)?;
            let compile_ms = start.elapsed().as_secs_f64() * 1e3;
            let tensors: Vec<Tensor> = feeds.iter().map(Value::to_tensor).collect();
            let times = time_runs(min_runs, || {
                compiled
                    .run(&tensors)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })?;
            if args.profile {
                for (kind, ms) in compiled.profile(&tensors)? {
                    eprintln!("  {kind:<14} {ms:>10.3} ms");
                }
            }
            (times, compile_ms, Some(compiled.stats().clone()))
        }
    };
    let report = ModelReport {
        model: path.display().to_string(),
        backend: args.backend,
        threads: if args.backend == Backend::Cpu {
            args.threads
        } else {
            1
        },
        runs: times.len(),
        median_ms: times[times.len() / 2] * 1e3,
        min_ms: times[0] * 1e3,
        lower_ms,
        compile_ms,
        cpu,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} on {:?}, {} thread(s): median {:.3} ms (min {:.3} ms, {} runs)",
            report.model,
            report.backend,
            report.threads,
            report.median_ms,
            report.min_ms,
            report.runs
        );
        println!(
            "  lower {:.0} ms, compile {:.0} ms",
            report.lower_ms, report.compile_ms
        );
        if let Some(stats) = &report.cpu {
            println!(
                "  {} kernels ({} GEMMs), arena {} KiB (without reuse {} KiB), weights {} KiB",
                stats.kernels,
                stats.gemms,
                stats.arena_bytes / 1024,
                stats.naive_arena_bytes / 1024,
                stats.weight_bytes / 1024
            );
        }
    }
    Ok(0)
}

/// Two warm-up runs, then at least `min_runs` timed runs, more until 2 s
/// have passed (at most 1000); sorted seconds.
fn time_runs(min_runs: usize, mut once: impl FnMut() -> Result<(), String>) -> CliResult<Vec<f64>> {
    for _ in 0..2 {
        once()?;
    }
    let started = Instant::now();
    let mut times = Vec::new();
    while times.len() < min_runs
        || (started.elapsed() < Duration::from_secs(2) && times.len() < 1000)
    {
        let start = Instant::now();
        once()?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times)
}

/// Deterministic inputs for the graph's input types: floats in [-1, 1),
/// integers 0 (valid as indices), bools false.
fn synthetic_inputs(graph: &Graph) -> CliResult<Vec<Value>> {
    graph
        .inputs
        .iter()
        .map(|&id| {
            let v = graph.value(id);
            let shape = v.ty.static_shape().ok_or_else(|| {
                format!(
                    "input '{}' has the symbolic type {}; pass --dim or --inputs",
                    v.name, v.ty
                )
            })?;
            let n: usize = shape.iter().product();
            let tensor = match v.ty.dtype {
                DType::F32 => {
                    let mut state = 0x2545_F491u32;
                    let values: Vec<f32> = (0..n)
                        .map(|_| {
                            state ^= state << 13;
                            state ^= state >> 17;
                            state ^= state << 5;
                            (state >> 8) as f32 / (1u32 << 23) as f32 - 1.0
                        })
                        .collect();
                    Tensor::from_f32(&shape, &values)
                }
                dtype => Tensor::from_bytes(dtype, &shape, vec![0; dtype.storage_bytes(n)]),
            };
            Ok(Value::from_tensor(&tensor)?)
        })
        .collect()
}

fn gemm(args: GemmArgs) -> CliResult<i32> {
    let config = GemmBenchConfig {
        target: Target::parse(args.target.as_deref(), args.cpu.as_deref())?,
        m: args.m,
        k: args.k,
        n: args.n,
        threads: args.threads,
        min_runs: args.runs.max(1),
        min_time: Duration::from_secs(1),
    };
    let report = bench_gemm(&config)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "gemm {}x{}x{} f32, {} thread(s), target {} ({})",
            report.m, report.k, report.n, report.threads, report.target, report.cpu
        );
        println!(
            "  median {:.3} ms (min {:.3} ms, {} runs)  {:.1} GFLOP/s",
            report.median_ms, report.min_ms, report.runs, report.gflops
        );
        println!(
            "  peak {:.1} GFLOP/s = {:.2} GHz x {} FMA/cycle x {} lanes x 2 x {} thread(s)  ->  {:.1} % of peak",
            report.peak_gflops,
            report.peak.clock_ghz,
            report.peak.fma_units,
            report.peak.lanes,
            report.threads,
            report.peak_fraction * 100.0
        );
        println!("  compile {:.0} ms", report.compile_ms);
    }
    Ok(0)
}
