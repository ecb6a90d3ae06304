//! `m4c backends`: what each registered backend takes and whether this
//! host can run its code.

use m4c_compiler::backend::CodeGenerator;
use serde::Serialize;

use super::CliResult;

/// Arguments of `m4c backends`.
#[derive(clap::Args)]
pub struct BackendsArgs {
    /// Print JSON (one object per backend) instead of a table.
    #[arg(long)]
    json: bool,
}

/// One backend as `--json` lists it.
#[derive(Serialize)]
struct Listing {
    name: &'static str,
    description: &'static str,
    /// Whether this host can execute its code (default target).
    runnable: bool,
    /// Why not, when it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    not_runnable: Option<String>,
    /// IR operators it compiles.
    ops: Vec<&'static str>,
    /// Element types its kernels compute on.
    dtypes: Vec<String>,
    /// What `--target` accepts.
    targets: Vec<String>,
    /// Named support constraints (`name: rule`), for backends that state
    /// them (the NPU: `m4c_npu_codegen::constraints`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    constraints: Vec<String>,
}

fn listing(b: &dyn CodeGenerator) -> Listing {
    let caps = b.capabilities();
    let runnable = m4c_backends::runnable(b, None);
    Listing {
        name: b.name(),
        description: b.description(),
        runnable: runnable.is_ok(),
        not_runnable: runnable.err(),
        ops: caps.ops.iter().map(|k| k.name()).collect(),
        dtypes: caps.dtypes.iter().map(|d| d.to_string()).collect(),
        targets: b.targets(),
        constraints: match b.name() {
            "npu" => m4c_npu_codegen::constraints::CONSTRAINTS
                .iter()
                .map(|c| format!("{}: {}", c.name, c.rule))
                .collect(),
            _ => vec![],
        },
    }
}

/// Runs `m4c backends`.
pub fn run(args: BackendsArgs) -> CliResult<i32> {
    let all: Vec<Listing> = m4c_backends::all()
        .iter()
        .chain(m4c_backends::calibrated())
        .map(|b| listing(*b))
        .collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(0);
    }
    for l in &all {
        let runs = match &l.not_runnable {
            None => "runs here".to_string(),
            Some(why) => format!("does not run here: {why}"),
        };
        println!("{:<10} {} ({runs})", l.name, l.description);
        println!("{:<10} targets: {}", "", l.targets.join(", "));
        println!("{:<10} dtypes:  {}", "", l.dtypes.join(", "));
        println!("{:<10} ops ({}): {}", "", l.ops.len(), l.ops.join(" "));
        for c in &l.constraints {
            println!("{:<10} rule {c}", "");
        }
    }
    Ok(0)
}
