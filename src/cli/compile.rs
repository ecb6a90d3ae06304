//! `m4c compile`: one model to a standalone artifact of one backend (for
//! the CPU: shared library, object file, plan and packed weights; for a
//! cross target such as aarch64 the object, plan and weights).

use std::path::PathBuf;

use serde::Serialize;

use super::backend::BackendArgs;
use super::model_args::{DimArgs, Model, ModelPath, OptSwitch};
use super::CliResult;

/// Arguments of `m4c compile`.
#[derive(clap::Args)]
pub struct CompileArgs {
    /// The model (ONNX, or an IR file from `m4c opt -o`).
    model: ModelPath,
    #[command(flatten)]
    backend: BackendArgs,
    #[command(flatten)]
    dims: DimArgs,
    #[command(flatten)]
    opt: OptSwitch,
    /// The artifact directory to create (it must not exist).
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    output: PathBuf,
}

/// `artifact.json`, written beside the files.
#[derive(Serialize)]
struct Summary<'a> {
    model: String,
    backend: &'a str,
    target: &'a str,
    tuning: &'a str,
    runnable_here: bool,
    files: Vec<&'a str>,
    stats: &'a serde_json::Value,
}

/// Runs `m4c compile`.
pub fn run(args: CompileArgs) -> CliResult<i32> {
    super::memory::large_buffers_in_own_mappings();
    if std::fs::symlink_metadata(&args.output).is_ok() {
        return Err(format!(
            "{}: already exists (give a new directory)",
            args.output.display()
        )
        .into());
    }
    let generator = args.backend.generator();
    let model = Model::open(&args.model)?;
    let graph = model.lower(&args.dims.options(&model, Some(1))?)?;
    let graph = args
        .opt
        .apply(&model, graph, &generator.cost_model(), false)?;
    let progress =
        super::progress::Progress::spinner(format!("compiling for {}", generator.name()));
    let artifact = generator.compile(&graph, &args.backend.request()?)?;
    drop(progress);
    // Everything goes to a fresh sibling directory renamed into place, so
    // a failure (or an interruption) leaves nothing behind.
    let tmp = m4c_runtime::outfile::PendingDir::create(&args.output, &[&args.model])?;
    let summary = Summary {
        model: args.model.display().to_string(),
        backend: &artifact.backend,
        target: &artifact.target,
        tuning: &artifact.tuning,
        runnable_here: artifact.runnable,
        files: artifact.files.iter().map(|f| f.name.as_str()).collect(),
        stats: &artifact.stats,
    };
    for f in &artifact.files {
        let path = tmp.dir().join(&f.name);
        std::fs::write(&path, &f.bytes)
            .map_err(|e| format!("cannot write {}: {e}", args.output.join(&f.name).display()))?;
    }
    let json = serde_json::to_string_pretty(&summary)?;
    std::fs::write(tmp.dir().join("artifact.json"), json).map_err(|e| {
        format!(
            "cannot write {}: {e}",
            args.output.join("artifact.json").display()
        )
    })?;
    tmp.commit()?;
    println!(
        "wrote {} ({} {} {}): {}",
        args.output.display(),
        artifact.backend,
        artifact.target,
        artifact.tuning,
        summary.files.join(", ")
    );
    Ok(0)
}
