//! `m4c partition`: split models into accelerator sub-graphs and CPU
//! fallback and report coverage (the paper's Fig. 2).

use m4c_compiler::partition::{markdown_table, NpuOpSet, OpSupport, PartitionReport};
use m4c_compiler::{lower, OnnxModel};

use super::model_args::{DimArgs, ModelPath};
use super::CliResult;

/// Arguments of `m4c partition`.
#[derive(clap::Args)]
pub struct PartitionArgs {
    /// ONNX models.
    #[arg(required = true)]
    models: Vec<ModelPath>,
    /// Accelerator: `npu[:PRESET|CONFIG.toml]` (the op set does not depend
    /// on the config; the config is checked and named in the report).
    #[arg(long, default_value = "npu")]
    target: String,
    /// Print JSON instead of the Markdown table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    dims: DimArgs,
}

fn support(target: &str) -> CliResult<Box<dyn OpSupport>> {
    let (name, spec) = target.split_once(':').unwrap_or((target, ""));
    match name {
        "npu" => {
            if !spec.is_empty() {
                m4c_npu::config::MachineConfig::load(spec)?;
            }
            Ok(Box::new(NpuOpSet))
        }
        _ => Err(format!("unknown target `{target}` (npu[:PRESET|CONFIG])").into()),
    }
}

/// Runs `m4c partition`.
pub fn run(args: PartitionArgs) -> CliResult<i32> {
    let support = support(&args.target)?;
    let mut reports = vec![];
    for path in &args.models {
        let model = OnnxModel::load(path)?;
        let graph = lower(&model, &args.dims.options(Some(1)))?;
        let name = path.file_stem().map_or_else(
            || path.display().to_string(),
            |s| s.to_string_lossy().into_owned(),
        );
        reports.push(PartitionReport::of(&name, &graph, support.as_ref()));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        print!("{}", markdown_table(&reports));
    }
    Ok(0)
}
