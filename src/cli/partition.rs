//! `m4c partition`: split models into accelerator sub-graphs and CPU
//! fallback and report coverage (the paper's Fig. 2).

use m4c_compiler::backend::CodeGenerator;
use m4c_compiler::partition::{markdown_table, NpuOpSet, OpSupport, PartitionReport};
use m4c_ir::{Graph, Node};

use super::model_args::{DimArgs, Model, ModelPath, OptSwitch};
use super::progress::Progress;
use super::CliResult;

/// Arguments of `m4c partition`.
#[derive(clap::Args)]
pub struct PartitionArgs {
    /// Models (ONNX, or IR files from `m4c opt -o`).
    #[arg(required = true)]
    models: Vec<ModelPath>,
    /// Accelerator: `npu[:PRESET|CONFIG.toml]` (the op set does not depend
    /// on the config; the config is checked, and its roofline is the
    /// optimiser's cost model), or a registered backend (`m4c backends`),
    /// whose refusals decide.
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

fn support(target: &str) -> CliResult<Box<dyn OpSupport>> {
    let (name, spec) = target.split_once(':').unwrap_or((target, ""));
    match name {
        "npu" => {
            if !spec.is_empty() {
                m4c_npu::config::MachineConfig::load(spec)?;
            }
            Ok(Box::new(NpuOpSet))
        }
        _ if spec.is_empty() => match m4c_backends::lookup(name) {
            Ok(backend) => Ok(Box::new(Backend(backend))),
            Err(e) => Err(format!("{e}; or npu[:PRESET|CONFIG]").into()),
        },
        _ => Err(format!("unknown target `{target}` (npu[:PRESET|CONFIG] or a backend)").into()),
    }
}

/// A registered backend as a partition target: it supports what it does
/// not refuse.
struct Backend(&'static dyn CodeGenerator);

impl OpSupport for Backend {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn supports(&self, g: &Graph, node: &Node) -> bool {
        self.0.refuse(g, node).is_none()
    }
}

/// Runs `m4c partition`.
pub fn run(args: PartitionArgs) -> CliResult<i32> {
    let support = support(&args.target)?;
    let cost = super::opt::target_model(&args.target)?;
    let mut reports = vec![];
    let progress = Progress::bar(args.models.len(), "models");
    for path in &args.models {
        progress.item(path.display().to_string());
        let model = Model::open(path)?;
        let graph = model.lower(&args.dims.options(&model, Some(1))?)?;
        let graph = args.opt.apply(&model, graph, &cost, false)?;
        let name = path.file_stem().map_or_else(
            || path.display().to_string(),
            |s| s.to_string_lossy().into_owned(),
        );
        reports.push(PartitionReport::of(&name, &graph, support.as_ref()));
        progress.inc();
    }
    drop(progress);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        print!("{}", markdown_table(&reports));
    }
    Ok(0)
}
