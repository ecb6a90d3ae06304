//! `m4c firmware`: build a firmware bundle from ONNX modules, and show one.
//! For `--backend npu` each module is calibrated on an `.npz` of its
//! inputs (`--calibrate`, else `MODEL.inputs.npz` beside the model) and
//! compiled as `m4c run --backend npu` compiles it
//! (`super::npu_backend::compile_artifact`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use m4c_compiler::adapter::{add_slots, SlotSpec};
use m4c_compiler::bundle::{prepare, BuildError, ModuleSource};
use m4c_compiler::FrontendError;
use m4c_ops::Value;
use m4c_runtime::bundle::format::{is_valid_name, SectionKind, REFERENCE_BACKEND};
use m4c_runtime::bundle::sign::SecretKey;
use m4c_runtime::bundle::Bundle;
use m4c_runtime::outfile::{Options, Pending};

use super::model_args::{DimArgs, Model, OptSwitch};
use super::progress::Progress;
use super::CliResult;

/// Arguments of `m4c firmware`.
#[derive(clap::Args)]
pub struct FirmwareArgs {
    #[command(subcommand)]
    command: FirmwareCommand,
}

#[derive(clap::Subcommand)]
enum FirmwareCommand {
    /// Lower each model once and pack them, with their weights
    /// deduplicated, into one bundle (written atomically).
    Build(Box<BuildArgs>),
    /// Validate a bundle and list its modules, sections and content hash.
    Info {
        /// The bundle.
        bundle: PathBuf,
        #[command(flatten)]
        trust: super::keygen::TrustArgs,
    },
}

#[derive(clap::Args)]
struct BuildArgs {
    /// A module: its name and the model it is built from (ONNX, or an IR
    /// file from `m4c opt -o`; repeat).
    #[arg(long = "module", value_name = "NAME=MODEL", value_parser = parse_module, required = true)]
    modules: Vec<(String, PathBuf)>,
    /// What the modules are compiled for (see `m4c backends`):
    /// `reference` (the IR only, run by the interpreter) or a code
    /// generator such as `cpu` (machine code, plus the IR for fallback and
    /// adapters) or `npu[:CONFIG]` (programs for the simulated NPU,
    /// calibrated per module: see --calibrate).
    #[arg(long, default_value = REFERENCE_BACKEND, value_parser = super::backend::parse_backend)]
    backend: String,
    /// The backend's target (CPU: host, x86_64-avx512, x86_64-avx2; the
    /// code must run on this machine, which links it. NPU: a preset or a
    /// machine config file, carried in the bundle).
    #[arg(long, value_name = "TARGET")]
    target: Option<String>,
    /// Tuning (CPU: the LLVM CPU name the code is tuned for).
    #[arg(long, value_name = "CPU")]
    cpu: Option<String>,
    /// Value of any symbolic dimension not bound by --dim.
    #[arg(long, value_name = "N")]
    default_dim: Option<usize>,
    #[command(flatten)]
    dims: DimArgs,
    /// A symbolic dimension of one module only, over --dim (e.g. a
    /// decoder's prefill bucket from the same model as its decode module:
    /// `--module-dim backbone_prefill:sequence_length=8`).
    #[arg(long = "module-dim", value_name = "MODULE:NAME=N", value_parser = parse_module_dim)]
    module_dims: Vec<(String, (String, usize))>,
    #[command(flatten)]
    opt: OptSwitch,
    /// Compile the modules for adapters: every MatMul whose module path
    /// ends with a target (PEFT's `target_modules`) gets a LoRA slot of
    /// rank R, bound at load to an adapter's factors (`docs/DEPLOY.md`),
    /// e.g. `q_proj,v_proj:16`.
    #[arg(long, value_name = "TARGETS:RANK", value_parser = |s: &str| s.parse::<SlotSpec>())]
    lora_slots: Option<SlotSpec>,
    /// `--backend npu`: calibrate module NAME's activation ranges on the
    /// model inputs in DATA.npz (repeat per module; default: the model's
    /// `MODEL.inputs.npz` beside it, when it exists).
    #[arg(long = "calibrate", value_name = "NAME=DATA.npz", value_parser = parse_module)]
    calibrate: Vec<(String, PathBuf)>,
    /// `--backend npu`: refuse any CPU fallback (exit 2, listing each node
    /// that would fall back and the constraint it violates).
    #[arg(long)]
    strict: bool,
    /// The bundle to write.
    #[arg(short = 'o', long = "output", value_name = "M4.fw")]
    output: PathBuf,
    /// Sign the bundle with this secret key (from `m4c keygen`): the
    /// runtime loads native code only from firmware signed by a trusted key.
    #[arg(long, value_name = "KEY")]
    sign_key: Option<PathBuf>,
}

fn parse_module_dim(s: &str) -> Result<(String, (String, usize)), String> {
    let (module, dim) = s.split_once(':').ok_or("expected MODULE:NAME=N")?;
    let (k, v) = dim.split_once('=').ok_or("expected MODULE:NAME=N")?;
    let n = v
        .parse()
        .map_err(|_| format!("'{v}' is not a dimension size"))?;
    Ok((module.to_string(), (k.to_string(), n)))
}

fn parse_module(s: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = s.split_once('=').ok_or("expected NAME=MODEL.onnx")?;
    Ok((name.to_string(), PathBuf::from(path)))
}

/// Runs `m4c firmware ...`; exit 0 on success, errors exit 2 (in `main`).
pub fn run(args: FirmwareArgs) -> CliResult<i32> {
    match args.command {
        FirmwareCommand::Build(b) => build(*b),
        FirmwareCommand::Info { bundle, trust } => {
            let fw = open(&bundle)?;
            print_summary(&bundle, &fw);
            print_signature(&fw, &trust)?;
            Ok(0)
        }
    }
}

fn build(args: BuildArgs) -> CliResult<i32> {
    super::memory::large_buffers_in_own_mappings();
    let generator = m4c_backends::lookup(super::backend::split_backend(&args.backend).0)?;
    let request = super::backend::compile_request(
        generator.name(),
        super::backend::merge_target(&args.backend, args.target.clone())?,
        args.cpu.clone(),
        1,
    )?;
    let npu = generator.name() == "npu";
    let calibration = calibration_files(&args, npu)?;
    let mut inputs: Vec<PathBuf> = calibration.values().cloned().collect();
    for (_, path) in &args.modules {
        inputs.push(path.clone());
        if m4c_compiler::ir_file::is_ir_file(path) {
            inputs.push(m4c_compiler::ir_file::weights_path(path));
        }
    }
    inputs.extend(args.sign_key.iter().cloned());
    let inputs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
    m4c_runtime::outfile::check(&args.output, &inputs, false)?;
    let sign_key = args.sign_key.as_deref().map(SecretKey::read).transpose()?;
    let cost = generator.cost_model();
    let mut names = std::collections::BTreeSet::new();
    for (name, _) in &args.modules {
        if !is_valid_name(name) {
            return Err(BuildError::InvalidName(name.clone()).into());
        }
        if !names.insert(name) {
            return Err(BuildError::DuplicateModule(name.clone()).into());
        }
    }
    let mut samples = BTreeMap::new();
    for (name, file) in &calibration {
        let arrays = m4c_runtime::read_npz(file).map_err(|e| format!("module `{name}`: {e}"))?;
        samples.insert(name.clone(), arrays);
    }
    let progress = Progress::bar(args.modules.len(), "modules");
    let mut sources = vec![];
    for (name, path) in &args.modules {
        progress.item(name.clone());
        let in_module = |e: Box<dyn std::error::Error>| format!("module `{name}`: {e}");
        let source =
            module_source(&args, name, path, &cost, samples.get(name)).map_err(in_module)?;
        sources.push(source);
        progress.inc();
    }
    drop(progress);
    if let Some(spec) = &args.lora_slots {
        let mut any = false;
        for m in &mut sources {
            let (g, sites) =
                add_slots(&m.graph, spec).map_err(|e| format!("module `{}`: {e}", m.name))?;
            if !sites.is_empty() {
                eprintln!(
                    "module `{}`: {} LoRA slots of rank {} ({})",
                    m.name,
                    sites.len(),
                    spec.rank,
                    sites
                        .iter()
                        .map(|s| s.site.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                m.graph = g;
                any = true;
            }
        }
        if !any {
            return Err(format!(
                "--lora-slots: no MatMul of any module has a module path ending with {}",
                spec.targets.join(" or ")
            )
            .into());
        }
    }
    if generator.name() != REFERENCE_BACKEND {
        for m in &mut sources {
            let started = std::time::Instant::now();
            let artifact = match samples.get(&m.name) {
                Some(arrays) => npu_artifact(m, arrays, &calibration[&m.name], &request, &args),
                None => generator.compile(&m.graph, &request).map_err(Into::into),
            }
            .map_err(|e| format!("module `{}`: {e}", m.name))?;
            // Loadable code is the `code` section (a CPU shared library,
            // GPU text); a cross-compiled CPU object has none. GPU text
            // loads wherever the device is, whatever this machine has.
            if artifact.section(SectionKind::Code).is_none() {
                return Err(format!(
                    "module `{}`: code for {} was not linked (it cannot run on this machine); bundles carry loadable code only (use m4c compile for cross targets)",
                    m.name, artifact.target
                )
                .into());
            }
            let detail = if npu {
                npu_parts(&artifact.stats)
            } else {
                artifact.tuning.clone()
            };
            eprintln!(
                "compiled `{}` for {} {} ({detail}) in {:.1} s",
                m.name,
                generator.name(),
                artifact.target,
                started.elapsed().as_secs_f64()
            );
            m.code.push(artifact);
        }
    }
    let progress = Progress::spinner(format!("writing {}", args.output.display()));
    let assembled = prepare(sources, generator.name())?;
    // Streamed into the output's temporary: the bundle is never held in
    // memory beside its parts.
    let mut out = Pending::create(&args.output, &inputs, Options::default())?;
    let len = assembled
        .write(out.writer(), sign_key.as_ref())
        .map_err(|e| format!("{}: {e}", args.output.display()))?;
    out.finish()?;
    drop(assembled);
    // Read back what is about to be installed, with the runtime's checks.
    let bundle = Bundle::open(out.temp_path())
        .map_err(|e| format!("the built bundle does not load: {e}"))?;
    out.commit()?;
    drop(progress);
    let model_bytes: u64 = args
        .modules
        .iter()
        .filter_map(|(_, p)| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    println!(
        "wrote {} ({len} bytes; the model files total {model_bytes} bytes)",
        args.output.display(),
    );
    print_summary(&args.output, &bundle);
    Ok(0)
}

/// The calibration file of every module for `--backend npu` (`npu`):
/// its `--calibrate`, else `MODEL.inputs.npz` beside the model
/// (announced), else an error; none for other backends, which take no
/// `--calibrate` or `--strict`.
fn calibration_files(args: &BuildArgs, npu: bool) -> CliResult<BTreeMap<String, PathBuf>> {
    if !npu {
        if args.strict || !args.calibrate.is_empty() {
            return Err("--calibrate and --strict apply to --backend npu".into());
        }
        return Ok(BTreeMap::new());
    }
    if args.lora_slots.is_some() {
        return Err("--lora-slots does not apply to --backend npu (the NPU code is compiled for the module's weights)".into());
    }
    let mut files = BTreeMap::new();
    for (name, file) in &args.calibrate {
        if !args.modules.iter().any(|(m, _)| m == name) {
            return Err(format!("--calibrate {name}: there is no module `{name}`").into());
        }
        if files.insert(name.clone(), file.clone()).is_some() {
            return Err(format!("--calibrate {name}: given twice").into());
        }
    }
    for (name, model) in &args.modules {
        if files.contains_key(name) {
            continue;
        }
        let beside = model.with_extension("inputs.npz");
        if !beside.is_file() {
            return Err(format!(
                "module `{name}`: the NPU needs calibration data and {} does not exist: pass --calibrate {name}=DATA.npz (an .npz of the model's inputs)",
                beside.display()
            )
            .into());
        }
        eprintln!(
            "note: module `{name}`: calibrating NPU activation ranges on {} (beside the model; --calibrate {name}=DATA.npz chooses)",
            beside.display()
        );
        files.insert(name.clone(), beside);
    }
    Ok(files)
}

/// Module `m` compiled for the NPU of `request`, calibrated on `arrays`
/// (read from `file`), as `m4c run --backend npu` compiles it.
fn npu_artifact(
    m: &ModuleSource,
    arrays: &BTreeMap<String, Value>,
    file: &Path,
    request: &m4c_compiler::backend::CompileRequest,
    args: &BuildArgs,
) -> CliResult<m4c_compiler::backend::Artifact> {
    let feeds = super::npu_backend::calibration_feeds(&m.graph, arrays, file)?;
    let request = super::npu_backend::NpuRequest {
        target: request.target.clone(),
        threads: request.threads,
        strict: args.strict,
        layer_by_layer: false,
    };
    super::npu_backend::compile_artifact(&m.graph, &feeds, &request)
}

/// The parts of an NPU artifact, from its stats.
fn npu_parts(stats: &serde_json::Value) -> String {
    let n = |k: &str| stats[k].as_u64().unwrap_or(0);
    format!(
        "{} NPU part(s), {} CPU-fallback part(s) of which {} compiled",
        n("npu_parts"),
        n("fallback_parts"),
        n("fallback_compiled")
    )
}

/// Lowers (and by default optimises) one module's model; with
/// calibration data (`--backend npu`) at the shapes of its arrays.
fn module_source(
    args: &BuildArgs,
    name: &str,
    path: &Path,
    cost: &m4c_compiler::opt::Roofline,
    calibration: Option<&BTreeMap<String, Value>>,
) -> CliResult<ModuleSource> {
    let model = Model::open(path)?;
    let mut dims = args.dims.clone();
    dims.dims.extend(
        args.module_dims
            .iter()
            .filter(|(m, _)| m == name)
            .map(|(_, d)| d.clone()),
    );
    // A decoder with past: its total length follows from the sequence and
    // past lengths (given, or --default-dim).
    let given: std::collections::HashMap<String, usize> = dims.dims.iter().cloned().collect();
    let default = args.default_dim;
    let derived = super::generate::decoder_dims(&model, &given, default.unwrap_or(1));
    if let [(seq, _), (past, _), (total, n)] = &derived[..] {
        let bound = |d: &String| given.contains_key(d) || default.is_some();
        if bound(seq) && bound(past) && !given.contains_key(total) {
            dims.dims.push((total.clone(), *n));
        }
    }
    if let Some((m, _)) = args
        .module_dims
        .iter()
        .find(|(m, _)| !args.modules.iter().any(|(n, _)| n == m))
    {
        return Err(format!("--module-dim {m}: there is no module `{m}`").into());
    }
    let mut opts = dims.options(&model, args.default_dim)?;
    if let Some(arrays) = calibration {
        for name in model.input_names(dims.pinned())? {
            if let Some(v) = super::run::lookup(arrays, &name) {
                opts.input_shapes.insert(name, v.shape().to_vec());
            }
        }
    }
    let report = model.lower_report(&opts)?;
    let graph = report.graph.ok_or_else(|| FrontendError::Unsupported {
        path: path.to_path_buf(),
        nodes: report.unsupported,
    })?;
    let mut graph = args.opt.apply(&model, graph, cost, true)?;
    // The module's outputs keep the model's names (lowering and the
    // optimiser may have made another value the output).
    if let Some(names) = model.output_names() {
        for (&o, name) in graph.outputs.clone().iter().zip(names) {
            graph.values[o.index()].name = name;
        }
    }
    // The model (as large as its weights) goes before the module is
    // compiled; the file is hashed as it is read.
    drop(model);
    let source_blake3 = m4c_compiler::bundle::file_hash_hex(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(ModuleSource {
        name: name.to_string(),
        graph,
        dims: report.dims,
        source_blake3,
        code: vec![],
    })
}

fn open(path: &Path) -> CliResult<Bundle> {
    Ok(Bundle::open(path)?)
}

/// Who signed the bundle and whether this host trusts the key.
fn print_signature(b: &Bundle, trust: &super::keygen::TrustArgs) -> CliResult<()> {
    let npu = b.manifest().modules.iter().any(|m| m.backend == "npu");
    match b.signer() {
        None if npu => println!(
            "signature: none (native code in it is not loaded: NPU programs run, CPU-fallback parts on the interpreter)"
        ),
        None => println!("signature: none (native code in it is not loaded)"),
        Some(key) => {
            let trusted = if trust.keys()?.trusts(key) {
                "trusted"
            } else {
                "NOT trusted here (its native code is not loaded; --trust-key or the trust directory)"
            };
            println!("signature: valid, key {} ({trusted})", key.fingerprint());
        }
    }
    Ok(())
}

/// Bytes of the IR weights a bundle reads from its modules' code (each
/// weight's own size; the code's packed panels may add padding).
fn code_weight_bytes(m: &m4c_runtime::bundle::format::Manifest) -> u64 {
    m.modules
        .iter()
        .flat_map(|e| e.code_weights.values())
        .map(|w| {
            let elements: usize = w.shape.iter().product();
            let bits = w
                .dtype
                .parse::<m4c_ir::DType>()
                .map_or(0, |d| d.size_bits());
            (elements * bits).div_ceil(8) as u64
        })
        .sum()
}

fn print_summary(path: &Path, b: &Bundle) {
    let m = b.manifest();
    let weights_len: u64 = m
        .sections
        .iter()
        .filter(|s| s.kind == SectionKind::Weights)
        .map(|s| s.len)
        .sum();
    println!("{}: content hash {}", path.display(), b.content_hash_hex());
    println!(
        "weights: {weights_len} bytes in {} distinct blobs",
        m.blobs.len()
    );
    let from_code: usize = m.modules.iter().map(|e| e.code_weights.len()).sum();
    if from_code > 0 {
        println!(
            "weights read from the compiled code (stored once): {from_code}, {} bytes",
            code_weight_bytes(m)
        );
    }
    println!(
        "{:<16} {:<10} {:>8} {:>12} {:>10} {:>11}  dims",
        "module", "backend", "weights", "weight bytes", "IR bytes", "code bytes"
    );
    for e in &m.modules {
        let weight_bytes: u64 = e.weights.values().map(|w| m.blobs[w.blob].len).sum();
        let ir_bytes: u64 = m
            .sections
            .iter()
            .filter(|s| s.kind == SectionKind::Ir && s.name == e.ir_section)
            .map(|s| s.len)
            .sum();
        let code_bytes: u64 = m
            .sections
            .iter()
            .filter(|s| e.code.iter().any(|c| c.section == s.name))
            .filter(|s| s.kind != SectionKind::Ir && s.kind != SectionKind::Weights)
            .map(|s| s.len)
            .sum();
        let dims: Vec<String> = e.dims.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "{:<16} {:<10} {:>8} {:>12} {:>10} {:>11}  {}",
            e.name,
            e.backend,
            e.weights.len(),
            weight_bytes,
            ir_bytes,
            code_bytes,
            dims.join(" ")
        );
        for c in &e.code {
            let npu = b
                .code(&e.name)
                .iter()
                .find(|code| code.backend() == "npu" && code.entry().section == c.section);
            match npu.map(m4c_runtime::exec::npu::summary) {
                Some(Ok(s)) => println!(
                    "  code {}: NPU config {}, {} NPU part(s) ({} programs), {} CPU-fallback part(s) ({} native)",
                    c.section, s.config, s.npu_parts, s.programs, s.fallback_parts, s.native_parts
                ),
                // Checked when the bundle was opened.
                Some(Err(e)) => println!("  code {}: NPU code that does not decode: {e}", c.section),
                None => println!("  code {}: {} ({})", c.section, c.target, c.cpu),
            }
        }
    }
}
