//! `m4c partition`: split models into accelerator sub-graphs and CPU
//! fallback and report coverage (the paper's Fig. 2).

use m4c_compiler::partition::{markdown_table, PartitionReport};
use m4c_ir::Graph;

use super::model_args::{DimArgs, Model, ModelPath, OptSwitch};
use super::progress::Progress;
use super::CliResult;

/// Arguments of `m4c partition`.
#[derive(clap::Args)]
pub struct PartitionArgs {
    /// Models (ONNX, or IR files from `m4c opt -o`).
    #[arg(required = true)]
    models: Vec<ModelPath>,
    /// Accelerator: `npu[:PRESET|CONFIG.toml]` (default config edge-small;
    /// the op set does not depend on the config; the config is checked,
    /// named in the report, and its roofline is the optimiser's cost model),
    /// or a registered backend (`m4c backends`), whose refusals decide. A
    /// model that does not convert is a `FailsToConvert` row with the reason.
    #[arg(long, default_value = "npu")]
    target: String,
    #[command(flatten)]
    opt: OptSwitch,
    /// Print JSON instead of the Markdown table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    dims: DimArgs,
}

/// Runs `m4c partition`. A model that does not load, lower or optimise is
/// a row of its own with the reason; only when no model converts is it an
/// error.
pub fn run(args: PartitionArgs) -> CliResult<i32> {
    let support = super::backend::op_support(&args.target)?;
    let cost = super::opt::target_model(&args.target)?;
    let mut reports = vec![];
    let progress = Progress::bar(args.models.len(), "models");
    for path in &args.models {
        progress.item(path.display().to_string());
        let name = path.file_stem().map_or_else(
            || path.display().to_string(),
            |s| s.to_string_lossy().into_owned(),
        );
        let converted = (|| -> CliResult<Graph> {
            let model = Model::open(path)?;
            let graph = model.lower(&args.dims.options(&model, Some(1))?)?;
            args.opt.apply(&model, graph, &cost, false)
        })();
        reports.push(match converted {
            Ok(graph) => PartitionReport::of(&name, &graph, support.as_ref()),
            Err(e) => PartitionReport::failed(&name, support.name(), e.to_string()),
        });
        progress.inc();
    }
    drop(progress);
    if reports.iter().all(|r| r.error.is_some()) {
        let first = reports
            .first()
            .and_then(|r| r.error.as_deref())
            .unwrap_or("");
        return Err(format!(
            "no model could be converted ({} given); first: {first}",
            reports.len()
        )
        .into());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        print!("{}", markdown_table(&reports));
    }
    Ok(0)
}
