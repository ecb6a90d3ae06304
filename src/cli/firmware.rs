//! `m4c firmware`: build a firmware bundle from ONNX modules, and show one.

use std::path::{Path, PathBuf};

use m4c_compiler::bundle::{build_firmware, write_atomically, FirmwareOptions};
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
    /// What the modules are compiled for.
    #[arg(long, default_value = "reference", value_parser = |s: &str| s.parse::<Target>())]
    target: Target,
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
    let opts = FirmwareOptions {
        lower: args.dims.options(args.default_dim),
        target: args.target,
    };
    let bytes = build_firmware(&args.modules, &opts)?;
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
        "{:<16} {:<10} {:>8} {:>12} {:>10}  dims",
        "module", "target", "weights", "weight bytes", "IR bytes"
    );
    for e in &m.modules {
        let weight_bytes: u64 = e.weights.values().map(|w| m.blobs[w.blob].len).sum();
        let ir_bytes: u64 = m
            .sections
            .iter()
            .filter(|s| s.kind == SectionKind::Ir && s.name == e.ir_section)
            .map(|s| s.len)
            .sum();
        let dims: Vec<String> = e.dims.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "{:<16} {:<10} {:>8} {:>12} {:>10}  {}",
            e.name,
            e.target.to_string(),
            e.weights.len(),
            weight_bytes,
            ir_bytes,
            dims.join(" ")
        );
    }
}
