//! `m4c firmware`: build a firmware bundle from ONNX modules, and show one.

use std::path::{Path, PathBuf};

use m4c_compiler::bundle::{assemble, lower_modules, write_atomically, CompiledCode};
use m4c_cpu_codegen::write_graph_artifact;
use m4c_ir::Graph;
use m4c_runtime::bundle::format::{SectionKind, Target};
use m4c_runtime::bundle::Bundle;

use super::model_args::DimArgs;
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
    Build(BuildArgs),
    /// Validate a bundle and list its modules, sections and content hash.
    Info {
        /// The bundle.
        bundle: PathBuf,
    },
}

#[derive(clap::Args)]
struct BuildArgs {
    /// A module: its name and the ONNX model it is built from (repeat).
    #[arg(long = "module", value_name = "NAME=MODEL.onnx", value_parser = parse_module, required = true)]
    modules: Vec<(String, PathBuf)>,
    /// What the modules are compiled for: `reference` (the IR, run by the
    /// interpreter) or `cpu` (machine code from the CPU backend, plus the
    /// IR for fallback and adapters).
    #[arg(long, default_value = "reference", value_parser = |s: &str| s.parse::<Target>())]
    target: Target,
    /// With --target cpu: the instruction set (host, x86_64-avx512,
    /// x86_64-avx2); it must run on this machine, which links the code.
    #[arg(long, value_name = "ISA")]
    cpu_target: Option<String>,
    /// With --target cpu: the LLVM CPU name the code is tuned for.
    #[arg(long, value_name = "CPU")]
    cpu: Option<String>,
    /// Value of any symbolic dimension not bound by --dim.
    #[arg(long, value_name = "N")]
    default_dim: Option<usize>,
    #[command(flatten)]
    dims: DimArgs,
    /// The bundle to write.
    #[arg(short = 'o', long = "output", value_name = "M4.fw")]
    output: PathBuf,
}

fn parse_module(s: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = s.split_once('=').ok_or("expected NAME=MODEL.onnx")?;
    Ok((name.to_string(), PathBuf::from(path)))
}

/// Runs `m4c firmware ...`; exit 0 on success, errors exit 2 (in `main`).
pub fn run(args: FirmwareArgs) -> CliResult<i32> {
    match args.command {
        FirmwareCommand::Build(b) => build(b),
        FirmwareCommand::Info { bundle } => {
            print_summary(&bundle, &open(&bundle)?);
            Ok(0)
        }
    }
}

fn build(args: BuildArgs) -> CliResult<i32> {
    let mut sources = lower_modules(&args.modules, &args.dims.options(args.default_dim))?;
    match args.target {
        Target::Cpu => {
            let target =
                m4c_cpu_codegen::Target::parse(args.cpu_target.as_deref(), args.cpu.as_deref())?;
            for m in &mut sources {
                let started = std::time::Instant::now();
                m.code.push(
                    compile(&m.graph, &target).map_err(|e| format!("module `{}`: {e}", m.name))?,
                );
                eprintln!(
                    "compiled `{}` for {} ({}) in {:.1} s",
                    m.name,
                    target.name(),
                    target.cpu,
                    started.elapsed().as_secs_f64()
                );
            }
        }
        Target::Reference if args.cpu_target.is_some() || args.cpu.is_some() => {
            return Err("--cpu-target and --cpu apply to --target cpu".into())
        }
        Target::Reference => {}
    }
    let bytes = assemble(sources, args.target)?;
    // Read back what is about to be installed, with the runtime's checks.
    Bundle::from_bytes(&bytes).map_err(|e| format!("the built bundle does not load: {e}"))?;
    write_atomically(&args.output, &bytes)?;
    let onnx_bytes: u64 = args
        .modules
        .iter()
        .filter_map(|(_, p)| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    println!(
        "wrote {} ({} bytes; the ONNX files total {onnx_bytes} bytes)",
        args.output.display(),
        bytes.len()
    );
    print_summary(&args.output, &open(&args.output)?);
    Ok(0)
}

/// Compiles one module's graph with the CPU backend into a scratch
/// artifact directory and takes its files as the bundle's code sections.
fn compile(graph: &Graph, target: &m4c_cpu_codegen::Target) -> CliResult<CompiledCode> {
    let dir = ScratchDir::new()?;
    let manifest = write_graph_artifact(graph, target, &dir.0)?;
    let library = manifest.library.as_ref().ok_or_else(|| {
        format!(
            "code for {} was not linked (it cannot run on this machine); bundles carry shared libraries only",
            target.name()
        )
    })?;
    let read = |file: &str| {
        let path = dir.0.join(file);
        std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))
    };
    Ok(CompiledCode {
        target: manifest.target.clone(),
        cpu: manifest.cpu.clone(),
        library: read(library)?,
        plan: serde_json::to_vec(&manifest)?,
        weights: read(&manifest.weights)?,
    })
}

/// A fresh directory under the system's temporary directory, removed when
/// dropped (created with `create_dir`, so never an existing one).
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> CliResult<ScratchDir> {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("m4c-firmware-{}-{n}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(ScratchDir(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn open(path: &Path) -> CliResult<Bundle> {
    Bundle::open(path).map_err(|e| format!("{}: {e}", path.display()).into())
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
    println!(
        "{:<16} {:<10} {:>8} {:>12} {:>10} {:>11}  dims",
        "module", "target", "weights", "weight bytes", "IR bytes", "code bytes"
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
            e.target.to_string(),
            e.weights.len(),
            weight_bytes,
            ir_bytes,
            code_bytes,
            dims.join(" ")
        );
        for c in &e.code {
            println!("  code {}: {} ({})", c.section, c.target, c.cpu);
        }
    }
}
