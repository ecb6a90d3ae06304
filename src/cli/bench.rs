//! `m4c bench ...`: performance measurements (never pass/fail tests).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use m4c_cpu_codegen::{bench_gemm, GemmBenchConfig, Target};
use m4c_ir::{DType, Tensor, TensorType};
use m4c_ops::Value;
use m4c_runtime::bundle::{is_bundle, Bundle};
use m4c_runtime::exec::{load_module, Engine, LoadOptions, ModuleExecutor};
use m4c_runtime::read_npz;
use serde::Serialize;

use super::backend::BackendArgs;
use super::model_args::{DimArgs, Model, OptSwitch};
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

#[derive(clap::Args)]
struct ModelArgs {
    /// The model to time end to end (ONNX, or an IR file from `m4c opt -o`),
    /// or a firmware bundle (with --module).
    model: Option<PathBuf>,
    /// The bundle's module to time.
    #[arg(long, value_name = "NAME")]
    module: Option<String>,
    /// Adapter bundles to time the module with (repeat: they stay resident
    /// and are switched between without reloading a module built with LoRA
    /// slots); `median_ms` is with the first.
    #[arg(long = "adapter", value_name = "APP.m4a")]
    adapters: Vec<PathBuf>,
    /// Which engine runs the bundle's module.
    #[arg(long, value_name = "auto|compiled|reference", value_parser = |s: &str| s.parse::<Engine>())]
    engine: Option<Engine>,
    #[command(flatten)]
    trust: super::keygen::TrustArgs,
    /// Which backend runs the model (see `m4c backends`).
    #[arg(long, default_value = "cpu", value_parser = super::backend::parse_backend)]
    backend: String,
    /// Inputs as an .npz keyed by the model's input names; without it the
    /// inputs are deterministic pseudo-random values (zeros for integers).
    #[arg(long, value_name = "IN.npz")]
    inputs: Option<PathBuf>,
    /// Threads (compiled backends).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// The backend's target (CPU: host, x86_64, x86_64-avx512, x86_64-avx2).
    #[arg(long)]
    target: Option<String>,
    /// Tuning (CPU: the LLVM CPU name, validated), e.g. znver4.
    #[arg(long)]
    cpu: Option<String>,
    /// Timed runs at least (more are made until 2 s have passed, at most 1000).
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// `--backend npu`: refuse any CPU fallback (exit 2, listing each node
    /// that would fall back and the constraint it violates).
    #[arg(long)]
    strict: bool,
    /// `--backend npu`: run every NPU layer as a program of its own (its
    /// operands loaded from DRAM, its result stored back) instead of each
    /// NPU part's layers linked into one program whose feature maps stay
    /// in the feature-map SRAM where they fit: the schedule to compare with.
    #[arg(long)]
    layer_by_layer: bool,
    /// Write the per-layer table here: with `--backend npu`, NPU layers
    /// with simulated figures and quantisation SQNR and CPU-fallback parts
    /// with measured host time (docs/NPU_BACKEND.md); with `--profile` on
    /// the CPU backend, every kernel in plan order with its median time
    /// (step, symbol, kind, median_ms, percent).
    #[arg(long, value_name = "LAYERS.csv")]
    csv: Option<PathBuf>,
    /// `--backend npu`: calibrate the activation ranges on this sample
    /// (one array per model input) instead of on the run's inputs.
    #[arg(long, value_name = "DATA.npz")]
    calibrate: Option<PathBuf>,
    /// `--backend npu`: write the run as a Chrome/Perfetto trace (NPU,
    /// boundary and CPU tracks) here.
    #[arg(long, value_name = "T.json")]
    trace: Option<PathBuf>,
    /// Also time the model kernel by kernel (CPU backend; the median of
    /// five runs per kernel) and print the time per kernel kind; `--csv`
    /// writes every kernel's.
    #[arg(long)]
    profile: bool,
    #[command(flatten)]
    opt: OptSwitch,
    #[command(flatten)]
    dims: DimArgs,
}

/// What `m4c bench MODEL` reports (the keys of `--json`).
#[derive(Serialize)]
struct ModelReport {
    model: String,
    backend: String,
    /// Whether the e-graph optimiser ran before code generation.
    optimised: bool,
    threads: usize,
    runs: usize,
    /// Median wall time of one inference, milliseconds.
    median_ms: f64,
    /// Fastest run, milliseconds.
    min_ms: f64,
    /// Frontend lowering time, milliseconds.
    lower_ms: f64,
    /// Optimisation time, milliseconds (0 with --no-opt).
    opt_ms: f64,
    /// Code generation + linking + loading (0 for the interpreter),
    /// milliseconds.
    compile_ms: f64,
    /// The backend's compile figures (CPU: kernels, GEMMs, arena, weights).
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<serde_json::Value>,
}

#[derive(clap::Subcommand)]
enum BenchCommand {
    /// f32 GEMM C[m×n] = A[m×k]·B[k×n] on the CPU backend: median GFLOP/s
    /// and the fraction of the measured FP32 FMA peak; for m ≤ 8 (decode's
    /// matrix–vector products) also the GB/s B's weights stream at against
    /// the measured memory read bandwidth.
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

/// Runs per kernel that `--profile` takes the median of.
const PROFILE_RUNS: usize = 5;

/// Lowers and optimises the model, prepares its inputs, compiles it for
/// the backend and times repeated inferences.
fn model(args: ModelArgs) -> CliResult<i32> {
    let path = args
        .model
        .clone()
        .ok_or("expected `m4c bench gemm ...` or `m4c bench MODEL.onnx`")?;
    if is_bundle(&path) {
        let npu_only = [
            args.csv.is_some(),
            args.trace.is_some(),
            args.calibrate.is_some(),
            args.layer_by_layer,
        ];
        if args.strict || npu_only.contains(&true) {
            return Err("--strict, --calibrate, --csv, --trace and --layer-by-layer apply to a model run with --backend npu, not a bundle".into());
        }
        return bundle(&args, &path);
    }
    if args.module.is_some() || !args.adapters.is_empty() || args.engine.is_some() {
        return Err(format!(
            "{}: --module, --adapter and --engine apply to bundles",
            path.display()
        )
        .into());
    }
    let backend = BackendArgs {
        backend: args.backend.clone(),
        target: args.target.clone(),
        cpu: args.cpu.clone(),
        threads: args.threads,
    };
    let model = Model::open(&path)?;
    let lower_start = Instant::now();
    let mut opts = args.dims.options(&model, Some(1))?;
    let names = model.input_names(args.dims.pinned())?;
    let mut given = Vec::new();
    if let Some(file) = &args.inputs {
        let arrays = read_npz(file)?;
        for name in &names {
            let v = lookup(&arrays, name)
                .ok_or_else(|| format!("{}: no array for model input '{name}'", file.display()))?;
            opts.input_shapes.insert(name.clone(), v.shape().to_vec());
            given.push(v.clone());
        }
    }
    let graph = model.lower(&opts)?;
    let lower_ms = lower_start.elapsed().as_secs_f64() * 1e3;
    let opt_start = Instant::now();
    let graph = args
        .opt
        .apply(&model, graph, &backend.generator().cost_model(), false)?;
    let opt_ms = opt_start.elapsed().as_secs_f64() * 1e3;
    let feeds: Vec<Value> = if given.is_empty() {
        synthetic_inputs(&m4c_runtime::exec::Signature::of(&graph).inputs)?
    } else {
        given
    };
    if backend.generator().name() == "npu" {
        let request = super::npu_backend::NpuRequest {
            target: backend.request()?.target,
            threads: backend.request()?.threads,
            strict: args.strict,
            layer_by_layer: args.layer_by_layer,
        };
        let out = super::npu_backend::BenchOutputs {
            json: args.json,
            csv: args.csv.as_deref(),
            trace: args.trace.as_deref(),
            calibrate: args.calibrate.as_deref(),
        };
        let nodes = super::npu_backend::onnx_node_names(&model);
        return super::npu_backend::bench(&graph, &feeds, &request, args.runs, &nodes, out);
    }
    if args.trace.is_some() || args.calibrate.is_some() {
        return Err("--trace and --calibrate apply to --backend npu".into());
    }
    if args.csv.is_some() && !args.profile {
        return Err("--csv on the CPU backend writes the --profile table (add --profile)".into());
    }
    let read: Vec<&Path> = std::iter::once(path.as_path())
        .chain(args.inputs.as_deref())
        .collect();
    if let Some(csv) = &args.csv {
        // Refused before the runs, not after.
        m4c_runtime::outfile::check(csv, &read, false)?;
    }
    if args.strict {
        return Err("--strict applies to --backend npu (it refuses any CPU fallback)".into());
    }
    if args.layer_by_layer {
        return Err("--layer-by-layer applies to --backend npu".into());
    }
    let start = Instant::now();
    let name = graph.name.clone();
    let (executor, artifact) = backend.prepare(&name, graph)?;
    let compile_ms = artifact
        .as_ref()
        .map_or(0.0, |_| start.elapsed().as_secs_f64() * 1e3);
    let times = time_runs(args.runs.max(1), || {
        executor.run(&feeds).map(|_| ()).map_err(|e| e.to_string())
    })?;
    if args.profile {
        let compiled = executor
            .as_compiled()
            .ok_or("--profile times the CPU backend's kernels (use --backend cpu)")?;
        let steps = compiled.profile_steps(&feeds, PROFILE_RUNS)?;
        for (kind, ms) in m4c_runtime::exec::by_kind(&steps) {
            eprintln!("  {kind:<14} {ms:>10.3} ms");
        }
        if let Some(csv) = &args.csv {
            let total: f64 = steps.iter().map(|s| s.ms).sum();
            let mut text = String::from("step,symbol,kind,median_ms,percent\n");
            for (i, s) in steps.iter().enumerate() {
                let share = if total > 0.0 {
                    100.0 * s.ms / total
                } else {
                    0.0
                };
                text.push_str(&format!(
                    "{i},{},{},{:.4},{share:.2}\n",
                    s.symbol, s.kind, s.ms
                ));
            }
            m4c_runtime::outfile::write(csv, &read, text.as_bytes())?;
        }
    }
    let compiled = artifact.is_some();
    let report = ModelReport {
        model: path.display().to_string(),
        backend: args.backend.clone(),
        optimised: !args.opt.no_opt && !model.is_ir(),
        threads: if compiled { args.threads } else { 1 },
        runs: times.len(),
        median_ms: times[times.len() / 2] * 1e3,
        min_ms: times[0] * 1e3,
        lower_ms,
        opt_ms: if args.opt.no_opt { 0.0 } else { opt_ms },
        compile_ms,
        code: artifact.map(|a| a.stats),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} on {}{}, {} thread(s): median {:.3} ms (min {:.3} ms, {} runs)",
            report.model,
            report.backend,
            if report.optimised {
                ""
            } else {
                " (not optimised)"
            },
            report.threads,
            report.median_ms,
            report.min_ms,
            report.runs
        );
        println!(
            "  lower {:.0} ms, optimise {:.0} ms, compile {:.0} ms",
            report.lower_ms, report.opt_ms, report.compile_ms
        );
        if let Some(stats) = &report.code {
            let get = |k: &str| stats.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
            println!(
                "  {} kernels ({} GEMMs), arena {} KiB (without reuse {} KiB), weights {} KiB",
                get("kernels"),
                get("gemms"),
                get("arena_bytes") / 1024,
                get("naive_arena_bytes") / 1024,
                get("weight_bytes") / 1024
            );
        }
    }
    Ok(0)
}

/// One adapter's figures in a bundle benchmark.
#[derive(Serialize)]
struct AdapterTiming {
    adapter: String,
    median_ms: f64,
    /// Time to switch the loaded module to this adapter (slots: binding its
    /// factors; otherwise loading the module again with it).
    switch_ms: f64,
    /// Memory this adapter adds while resident (slots: the bound, padded
    /// factors; otherwise the adapter file, mapped).
    resident_bytes: usize,
    engine: String,
}

/// `m4c bench M4.fw --module NAME [--adapter APP.m4a ...]`: the module's
/// median latency without an adapter and with each one.
fn bundle(args: &ModelArgs, path: &std::path::Path) -> CliResult<i32> {
    let fw = Bundle::open(path)?;
    let name = args
        .module
        .as_deref()
        .ok_or_else(|| format!("{}: a bundle needs --module NAME", path.display()))?;
    let opts = LoadOptions {
        engine: args.engine.unwrap_or_default(),
        threads: super::backend::threads(args.threads)?,
        trusted: args.trust.keys()?,
    };
    let base = load_module(&fw, name, &[], &opts)?;
    if let Some(why) = &base.fallback {
        eprintln!("note: {why}");
    }
    let base = base.executor;
    let feeds = match &args.inputs {
        Some(file) => {
            let arrays = read_npz(file)?;
            base.signature()
                .inputs
                .iter()
                .map(|(n, _)| {
                    lookup(&arrays, n).cloned().ok_or_else(|| {
                        format!("{}: no array for input '{n}'", file.display()).into()
                    })
                })
                .collect::<CliResult<Vec<_>>>()?
        }
        None => synthetic_inputs(&base.signature().inputs)?,
    };
    let median = |exec: &dyn ModuleExecutor| -> CliResult<f64> {
        let times = time_runs(args.runs.max(1), || {
            exec.run(&feeds).map(|_| ()).map_err(|e| e.to_string())
        })?;
        Ok(times[times.len() / 2] * 1e3)
    };
    let base_ms = median(&*base)?;
    let mut adapters = vec![];
    for p in &args.adapters {
        let app = super::run::open_adapter_bundle(p, path)?;
        let started = Instant::now();
        let (exec, resident): (std::sync::Arc<dyn ModuleExecutor>, usize) = match base.as_slotted()
        {
            Some(s) => {
                let e = s.rebind(&[&app])?;
                let bytes = e.binding().bytes();
                (std::sync::Arc::new(e), bytes)
            }
            None => (
                load_module(&fw, name, &[&app], &opts)?.executor,
                app.file_len() as usize,
            ),
        };
        let switch_ms = started.elapsed().as_secs_f64() * 1e3;
        adapters.push(AdapterTiming {
            adapter: p.display().to_string(),
            median_ms: median(&*exec)?,
            switch_ms,
            resident_bytes: resident,
            engine: exec.backend().to_string(),
        });
    }
    let median_ms = adapters.first().map_or(base_ms, |a| a.median_ms);
    let report = serde_json::json!({
        "model": path.display().to_string(),
        "module": name,
        "engine": base.backend(),
        "slots": base.as_slotted().is_some(),
        "median_ms": median_ms,
        "base_median_ms": base_ms,
        "adapter_overhead": median_ms / base_ms,
        "adapters": adapters,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} module `{name}` on {}: median {base_ms:.3} ms without an adapter",
            path.display(),
            base.backend()
        );
        for a in &adapters {
            println!(
                "  with {}: median {:.3} ms ({:.2}x) on {}, switched in {:.3} ms, {} bytes resident",
                a.adapter,
                a.median_ms,
                a.median_ms / base_ms,
                a.engine,
                a.switch_ms,
                a.resident_bytes
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

/// Deterministic inputs for these input types: floats in [-1, 1),
/// integers 0 (valid as indices), bools false.
pub(super) fn synthetic_inputs(inputs: &[(String, TensorType)]) -> CliResult<Vec<Value>> {
    inputs
        .iter()
        .map(|(name, ty)| {
            let shape = ty.static_shape().ok_or_else(|| {
                format!("input '{name}' has the symbolic type {ty}; pass --dim or --inputs")
            })?;
            let n: usize = shape.iter().product();
            let tensor = match ty.dtype {
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
        if let Some(read) = report.read_gbps {
            println!(
                "  weights {:.1} MB at {:.1} GB/s  ->  {:.1} % of the measured read bandwidth {:.1} GB/s ({} thread(s))",
                4.0 * (report.k * report.n) as f64 / 1e6,
                report.weight_gbps,
                report.weight_gbps / read * 100.0,
                read,
                report.threads
            );
        }
        println!("  compile {:.0} ms", report.compile_ms);
    }
    Ok(0)
}
