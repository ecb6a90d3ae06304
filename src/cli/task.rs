//! `m4c task run`: run one task of a task manifest (the paper's execution
//! paths) on a firmware, print its result and the time per module.

use std::path::PathBuf;

use m4c_runtime::read_npz;
use m4c_runtime::task::{self, TaskInput, TaskOutput, TaskResult};

use super::CliResult;

/// Arguments of `m4c task`.
#[derive(clap::Args)]
pub struct TaskArgs {
    #[command(subcommand)]
    command: TaskCommand,
}

#[derive(clap::Subcommand)]
enum TaskCommand {
    /// Run a task: Path-1 encoder → projection → backbone, Path-2 zero-shot
    /// classification, Path-3 text generation, Path-4 one module.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// The firmware bundle.
    firmware: PathBuf,
    /// The task manifest (TOML, see docs/TASKS.md).
    #[arg(long, value_name = "tasks.toml")]
    manifest: PathBuf,
    /// The task to run.
    #[arg(long, value_name = "NAME")]
    task: String,
    /// Inputs of the path's first module, keyed by its input names (paths
    /// 1, 2 and 4).
    #[arg(long, value_name = "IN.npz")]
    input: Option<PathBuf>,
    /// Prompt token ids, comma-separated (path 3; after the prefix on
    /// path 1).
    #[arg(long, value_name = "ID,ID,...", value_delimiter = ',')]
    tokens: Vec<i64>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    trust: super::keygen::TrustArgs,
}

/// Runs `m4c task ...`; exit 0 on success, errors exit 2 (in `main`).
pub fn run(args: TaskArgs) -> CliResult<i32> {
    let TaskCommand::Run(args) = args.command;
    let load = m4c_runtime::exec::LoadOptions {
        trusted: args.trust.keys()?,
        ..Default::default()
    };
    let runner = task::open(&args.firmware, &args.manifest)?.with_load_options(load);
    let input = TaskInput {
        arrays: match &args.input {
            Some(p) => read_npz(p)?,
            None => Default::default(),
        },
        tokens: args.tokens.clone(),
    };
    let result = runner.run(&args.task, &input)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print_result(&result);
    }
    Ok(0)
}

fn print_result(r: &TaskResult) {
    let adapter = r.adapter.as_deref().map(|a| format!(", adapter {a}"));
    println!(
        "task {} (path {}{})",
        r.task,
        r.path,
        adapter.unwrap_or_default()
    );
    match &r.output {
        TaskOutput::Classification {
            label,
            scores,
            embedding,
        } => {
            println!("label: {label}");
            for (name, s) in scores {
                println!("  {name:<24} {s:>9.5}");
            }
            println!(
                "embedding ({} values): {}",
                embedding.len(),
                preview(embedding)
            );
        }
        TaskOutput::Generation {
            prefix_tokens,
            prompt_tokens,
            tokens,
            prompt_ms,
            decode_tokens_per_s,
            cache_bytes,
            stopped,
        } => {
            if !prefix_tokens.is_empty() {
                println!("prefix tokens (projection): {prefix_tokens:?}");
            }
            println!("prompt tokens: {prompt_tokens:?}");
            println!("generated: {tokens:?}");
            if let m4c_runtime::generate::Stop::ContextFull { at } = stopped {
                println!("stopped: context full at {at} tokens");
            }
            println!(
                "first token after {prompt_ms:.2} ms, then {decode_tokens_per_s:.1} tokens/s; KV cache {cache_bytes} bytes"
            );
        }
        TaskOutput::Tensors { outputs } => {
            for t in outputs {
                println!("{}: {:?} {}", t.name, t.shape, preview(&t.values));
            }
        }
    }
    println!(
        "{:<20} {:<10} {:>6} {:>10}",
        "module", "engine", "calls", "ms"
    );
    for m in &r.modules {
        println!(
            "{:<20} {:<10} {:>6} {:>10.3}",
            m.module, m.engine, m.calls, m.ms
        );
    }
}

/// The first values of a vector.
fn preview(v: &[f32]) -> String {
    let head: Vec<String> = v.iter().take(6).map(|x| format!("{x:.4}")).collect();
    let more = if v.len() > 6 { ", ..." } else { "" };
    format!("[{}{more}]", head.join(", "))
}
