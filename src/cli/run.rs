//! `m4c run`: execute a model on `.npz` inputs and compare with references.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use m4c_ir::TensorType;
use m4c_ops::Value;
use m4c_runtime::adapter::AdapterBundle;
use m4c_runtime::bundle::format::REFERENCE_BACKEND;
use m4c_runtime::bundle::{is_bundle, Bundle};
use m4c_runtime::exec::{load_module, Engine, LoadOptions, ModuleExecutor};
use m4c_runtime::{read_npz, sanitized_key, write_npz};

use super::backend::BackendArgs;
use super::model_args::{DimArgs, Model, ModelPath};
use super::CliResult;

/// Arguments of `m4c run`.
///
/// Exit status: 0 when the run succeeded (and every output matched
/// `--expect`), 1 when an output is out of tolerance, 2 on any error.
#[derive(clap::Args)]
pub struct RunArgs {
    /// The ONNX model, an IR file from `m4c opt -o`, or a bundle (M4.fw)
    /// with --module.
    model: ModelPath,
    /// The module of a bundle to run (e.g. backbone, img_enc).
    #[arg(long, value_name = "NAME")]
    module: Option<String>,
    /// Inputs as an .npz keyed by the model's input names (a name with
    /// characters outside [A-Za-z0-9_.-] may also use `_` in their place).
    #[arg(long, value_name = "IN.npz")]
    inputs: PathBuf,
    /// Write the outputs to this .npz (keys: the model's output names).
    #[arg(short = 'o', long = "output", value_name = "OUT.npz")]
    output: Option<PathBuf>,
    /// Compare the outputs with this .npz; prints max abs/rel error per output.
    #[arg(long, value_name = "REF.npz")]
    expect: Option<PathBuf>,
    /// With an ONNX model: a PEFT LoRA adapter directory
    /// (adapter_config.json + adapter_model.safetensors) attached to the
    /// model's MatMuls by module name. With a bundle: an adapter bundle
    /// (APP.m4a, from `m4c adapt`) built for that firmware. Repeatable
    /// (adapters are stacked).
    #[arg(long = "adapter", value_name = "DIR|APP.m4a")]
    adapters: Vec<PathBuf>,
    /// How LoRA branches (from --adapter or inside the ONNX graph) run:
    /// fold into the weights, keep as factors, or auto (by the cost model).
    #[arg(long, value_name = "fold|keep|auto")]
    lora: Option<m4c_compiler::opt::LoraPolicy>,
    /// Relative tolerance for --expect: |got − want| ≤ atol + rtol·|want|.
    #[arg(long, default_value_t = 1e-4)]
    rtol: f64,
    /// Absolute tolerance for --expect.
    #[arg(long, default_value_t = 1e-5)]
    atol: f64,
    /// Judge --expect by cosine similarity instead of --rtol/--atol: an
    /// output passes when its cosine with the reference is at least C
    /// (how quantised and NPU runs are compared with fp32 references).
    #[arg(long, value_name = "C", requires = "expect", value_parser = parse_cosine)]
    min_cosine: Option<f64>,
    #[command(flatten)]
    dims: DimArgs,
    /// With a bundle: run the module's compiled code (`compiled`, an error
    /// when the bundle has none this host can run), its IR on the reference
    /// interpreter (`reference`), or the code when usable and else the
    /// interpreter (`auto`, the default; the reason is printed).
    #[arg(long, value_name = "auto|compiled|reference", value_parser = |s: &str| s.parse::<Engine>())]
    engine: Option<Engine>,
    #[command(flatten)]
    backend: BackendArgs,
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
    /// `--backend npu`: calibrate the activation ranges on this sample
    /// (one array per model input) instead of on the run's inputs.
    #[arg(long, value_name = "DATA.npz")]
    calibrate: Option<PathBuf>,
    #[command(flatten)]
    trust: super::keygen::TrustArgs,
}

/// A cosine bound: a number in [-1, 1].
fn parse_cosine(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|c| (-1.0..=1.0).contains(c))
        .ok_or_else(|| format!("'{s}' is not a cosine similarity (a number from -1 to 1)"))
}

/// Looks a value name up in an npz map, exact name first, then sanitized.
pub fn lookup<'a>(arrays: &'a BTreeMap<String, Value>, name: &str) -> Option<&'a Value> {
    arrays
        .get(name)
        .or_else(|| arrays.get(&sanitized_key(name)))
}

/// A model ready to run: its executor, with the names and types its
/// inputs and outputs have (names as in `.npz` files).
struct Prepared {
    executor: std::sync::Arc<dyn ModuleExecutor>,
    inputs: Vec<(String, TensorType)>,
    outputs: Vec<String>,
}

/// Lowers a model (ONNX or IR) with the input shapes of the `.npz`
/// arrays, attaches `--adapter`s, and compiles and loads it on
/// `--backend`, all in this process.
fn prepare_model(args: &RunArgs, arrays: &BTreeMap<String, Value>) -> CliResult<Prepared> {
    let model = Model::open(&args.model)?;
    let mut opts = args.dims.options(&model, None)?;
    for name in model.input_names(args.dims.pinned())? {
        let v = lookup(arrays, &name).ok_or_else(|| missing_input(&args.inputs, &name, arrays))?;
        opts.input_shapes.insert(name, v.shape().to_vec());
    }
    let mut graph = model.lower(&opts)?;
    if !args.adapters.is_empty() || args.lora.is_some() {
        let o = m4c_compiler::opt::OptOptions {
            lora: args.lora.unwrap_or_default(),
            ..Default::default()
        };
        let cost = args.backend.generator().cost_model();
        let (g, report) = m4c_compiler::opt::apply_adapters(&graph, &args.adapters, &o, &cost)?;
        eprintln!("{report}");
        graph = g;
    }
    let outputs = model.output_names().unwrap_or_else(|| {
        graph
            .outputs
            .iter()
            .map(|&o| graph.value(o).name.clone())
            .collect()
    });
    let name = graph.name.clone();
    if args.backend.generator().name() == "npu" {
        // The NPU compiles the optimised graph, as `bench` and `partition`
        // do: recognised norms and fused patterns are single int8 layers
        // (a decomposed RMSNorm as LUT layers loses accuracy).
        if !model.is_ir() {
            let cost = args.backend.generator().cost_model();
            graph = m4c_compiler::opt::optimise(&graph, &Default::default(), &cost)?.0;
        }
        let feeds = super::npu_backend::calibration_feeds(&graph, arrays, &args.inputs)?;
        let request = args.backend.request()?;
        let request = super::npu_backend::NpuRequest {
            target: request.target,
            threads: request.threads,
            strict: args.strict,
            layer_by_layer: args.layer_by_layer,
        };
        let calibrate = args.calibrate.as_deref();
        let (module, _) = super::npu_backend::prepare(&graph, &feeds, calibrate, &request)?;
        let executor: std::sync::Arc<dyn m4c_runtime::exec::ModuleExecutor> = module;
        let inputs = executor.signature().inputs.clone();
        return Ok(Prepared {
            executor,
            inputs,
            outputs,
        });
    }
    if args.strict {
        return Err("--strict applies to --backend npu (it refuses any CPU fallback)".into());
    }
    if args.layer_by_layer {
        return Err("--layer-by-layer applies to --backend npu".into());
    }
    if args.calibrate.is_some() {
        return Err("--calibrate applies to --backend npu".into());
    }
    let (executor, _) = args
        .backend
        .prepare(&name, graph)
        .map_err(|e| format!("{}: {e}", args.model.display()))?;
    let inputs = executor.signature().inputs.clone();
    Ok(Prepared {
        executor,
        inputs,
        outputs,
    })
}

/// Loads a module of a bundle (its IR keeps the ONNX value names) with the
/// adapter bundles of `--adapter` attached, on the engine `--engine` picks;
/// says on stderr what runs it (and why not the compiled code, if so).
fn prepare_bundle(args: &RunArgs) -> CliResult<Prepared> {
    if args.lora.is_some() {
        let msg = "--lora applies to ONNX models; an adapter bundle's LoRA mode is chosen when it is built (m4c adapt --lora)";
        return Err(format!("{}: {msg}", args.model.display()).into());
    }
    if args.backend.backend != REFERENCE_BACKEND || args.backend.target.is_some() {
        let msg = "--backend/--target apply to ONNX models; a bundle runs its own compiled code (choose with --engine)";
        return Err(format!("{}: {msg}", args.model.display()).into());
    }
    let bundle = Bundle::open(&args.model)?;
    let name = args.module.as_deref().ok_or_else(|| {
        format!(
            "{}: a bundle needs --module NAME (modules: {})",
            args.model.display(),
            bundle.modules().collect::<Vec<_>>().join(", ")
        )
    })?;
    let adapters = args
        .adapters
        .iter()
        .map(|p| open_adapter_bundle(p, &args.model))
        .collect::<CliResult<Vec<_>>>()?;
    let opts = LoadOptions {
        engine: args.engine.unwrap_or_default(),
        threads: super::backend::threads(args.backend.threads)?,
        trusted: args.trust.keys()?,
    };
    let started = std::time::Instant::now();
    let loaded = load_module(&bundle, name, &adapters.iter().collect::<Vec<_>>(), &opts)?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    // An NPU module says what runs each part (and why a fallback part runs
    // on the interpreter), as `run --backend npu` does.
    match loaded.executor.as_npu() {
        Some(npu) => super::npu_backend::announce_engines(npu),
        None => {
            if let Some(why) = &loaded.fallback {
                eprintln!("note: {why}");
            }
        }
    }
    let exec = loaded.executor;
    let engine = match exec.backend() {
        REFERENCE_BACKEND => "reference interpreter".to_string(),
        backend => format!("compiled code ({backend})"),
    };
    eprintln!(
        "module `{name}`: {engine}, loaded in {load_ms:.1} ms, arena {} bytes",
        exec.arena_bytes()
            .map_or("-".to_string(), |b| b.to_string())
    );
    let sig = exec.signature();
    let (inputs, outputs) = (
        sig.inputs.clone(),
        sig.outputs.iter().map(|(n, _)| n.clone()).collect(),
    );
    Ok(Prepared {
        executor: exec,
        inputs,
        outputs,
    })
}

/// Opens an `--adapter` given with a firmware: it must be an adapter bundle
/// file (a PEFT directory is packed for a firmware with `m4c adapt`).
pub fn open_adapter_bundle(path: &Path, firmware: &Path) -> CliResult<AdapterBundle> {
    if path.is_dir() {
        return Err(format!(
            "{}: is a PEFT directory; with a firmware give an adapter bundle (m4c adapt {} --module NAME --adapter {} -o APP.m4a)",
            path.display(),
            firmware.display(),
            path.display()
        )
        .into());
    }
    Ok(AdapterBundle::open(path)?)
}

fn missing_input(file: &std::path::Path, name: &str, arrays: &BTreeMap<String, Value>) -> String {
    let keys = arrays.keys().cloned().collect::<Vec<_>>().join(", ");
    format!(
        "{}: no array for model input '{name}' (keys: {keys})",
        file.display()
    )
}

/// Every file `run` reads (an IR file's weights sidecar included): the
/// output may be none of them.
fn input_files(args: &RunArgs) -> Vec<PathBuf> {
    let mut files = vec![args.model.clone(), args.inputs.clone()];
    if m4c_compiler::ir_file::is_ir_file(&args.model) {
        files.push(m4c_compiler::ir_file::weights_path(&args.model));
    }
    files.extend(args.expect.iter().cloned());
    files.extend(args.adapters.iter().cloned());
    files
}

/// Runs `m4c run`.
pub fn run(args: RunArgs) -> CliResult<i32> {
    let input_files = input_files(&args);
    let input_files: Vec<&Path> = input_files.iter().map(PathBuf::as_path).collect();
    if let Some(out) = &args.output {
        m4c_runtime::outfile::check(out, &input_files, false)?;
    }
    let arrays = read_npz(&args.inputs)?;
    let prepared = if is_bundle(&args.model) {
        if args.strict || args.calibrate.is_some() || args.layer_by_layer {
            return Err(
                "--strict, --calibrate and --layer-by-layer apply to a model run with --backend npu, not a bundle"
                    .into(),
            );
        }
        prepare_bundle(&args)?
    } else {
        if args.module.is_some() || args.engine.is_some() {
            return Err(format!(
                "{}: --module and --engine apply to bundles, not ONNX files (use --backend)",
                args.model.display()
            )
            .into());
        }
        if let Some(a) = args.adapters.iter().find(|a| is_bundle(a)) {
            return Err(format!(
                "{}: is an adapter bundle, which applies to the firmware it was built for; with an ONNX model give a PEFT directory",
                a.display()
            )
            .into());
        }
        prepare_model(&args, &arrays)?
    };
    let Prepared {
        executor,
        inputs,
        outputs: output_names,
    } = prepared;
    let mut values = Vec::with_capacity(inputs.len());
    for (name, want) in &inputs {
        let v = lookup(&arrays, name).ok_or_else(|| missing_input(&args.inputs, name, &arrays))?;
        if v.dtype() != want.dtype {
            return Err(format!(
                "{}: input '{name}' is {} but the model expects {}",
                args.inputs.display(),
                v.dtype(),
                want.dtype
            )
            .into());
        }
        if want.static_shape().is_some_and(|s| s != v.shape()) {
            return Err(format!(
                "{}: input '{name}' has shape {:?} but the model expects {want}",
                args.inputs.display(),
                v.shape()
            )
            .into());
        }
        values.push(v.clone());
    }
    let started = std::time::Instant::now();
    let outputs = executor
        .run(&values)
        .map_err(|e| format!("{}: {e}", args.model.display()))?;
    if is_bundle(&args.model) {
        eprintln!(
            "module `{}`: ran in {:.2} ms",
            executor.name(),
            started.elapsed().as_secs_f64() * 1e3
        );
    }
    let named: Vec<(String, Value)> = output_names.into_iter().zip(outputs).collect();
    let mut code = 0;
    if let Some(expect) = &args.expect {
        let refs = read_npz(expect)?;
        let mut compared = 0;
        println!(
            "{:<32} {:>12} {:>12} {:>10}  status",
            "output", "max_abs", "max_rel", "cosine"
        );
        for (name, got) in &named {
            let Some(want) = lookup(&refs, name) else {
                println!(
                    "{name:<32} {:>12} {:>12} {:>10}  not in {}",
                    "-",
                    "-",
                    "-",
                    expect.display()
                );
                continue;
            };
            compared += 1;
            let c = m4c_ops::compare(got, want, args.rtol, args.atol);
            let status = match (&c.shape_error, c.mismatches, args.min_cosine) {
                (Some(e), _, _) => format!("FAIL ({e})"),
                // NaN (non-finite output) fails too.
                (None, _, Some(min)) if c.cosine >= min => "ok".to_string(),
                (None, _, Some(min)) => format!("FAIL (cosine below {min})"),
                (None, 0, None) => "ok".to_string(),
                (None, n, None) => {
                    let mut s = format!("FAIL ({n} of {} elements out of tolerance", c.len);
                    for (k, what) in [(c.nan, "NaN"), (c.inf, "infinite")] {
                        if k > 0 {
                            s += &format!(", {k} {what}");
                        }
                    }
                    s + ")"
                }
            };
            if status != "ok" {
                code = 1;
            }
            println!(
                "{name:<32} {:>12.3e} {:>12.3e} {:>10.6}  {status}",
                c.max_abs, c.max_rel, c.cosine
            );
        }
        if compared == 0 {
            return Err(format!(
                "{}: none of the model's outputs is in the file",
                expect.display()
            )
            .into());
        }
    }
    if let Some(out) = &args.output {
        write_npz(out, &input_files, &named)?;
    }
    if args.expect.is_none() && args.output.is_none() {
        for (name, v) in &named {
            println!("{name}: {} {:?}", v.dtype(), v.shape());
        }
    }
    Ok(code)
}
