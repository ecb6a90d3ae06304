//! `m4c adapter info APP.m4a`: what an adapter bundle holds (sites, ranks,
//! scales, modules) and which firmware it is bound to.

use std::path::PathBuf;

use m4c_runtime::adapter::AdapterBundle;

use super::CliResult;

/// Arguments of `m4c adapter`.
#[derive(clap::Args)]
pub struct AdapterArgs {
    #[command(subcommand)]
    command: AdapterCommand,
}

#[derive(clap::Subcommand)]
enum AdapterCommand {
    /// Validate an adapter bundle and list its sites, ranks, scales,
    /// modules and the firmware it is bound to.
    Info {
        /// The adapter bundle.
        adapter: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `m4c adapter ...`; errors exit 2 (in `main`).
pub fn run(args: AdapterArgs) -> CliResult<i32> {
    let AdapterCommand::Info { adapter, json } = args.command;
    let app = AdapterBundle::open(&adapter)?;
    let info = app.info();
    let sites: Vec<serde_json::Value> = app
        .factors()
        .iter()
        .map(|f| {
            serde_json::json!({
                "target": f.target,
                "rank": f.a.shape.first(),
                "in_features": f.a.shape.get(1),
                "out_features": f.b.shape.first(),
                "scale": f.scale,
                "dtype": f.a.dtype.to_string(),
            })
        })
        .collect();
    if json {
        let report = serde_json::json!({
            "adapter": adapter.display().to_string(),
            "bytes": app.file_len(),
            "content_hash": app.content_hash_hex(),
            "firmware": info.firmware,
            "name": info.name,
            "lora": info.lora.to_string(),
            "modules": info.modules,
            "sites": sites,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(0);
    }
    println!(
        "{}: adapter `{}`, {} bytes, content hash {}",
        adapter.display(),
        info.name,
        app.file_len(),
        app.content_hash_hex()
    );
    println!("firmware: {}", info.firmware);
    println!("modules: {}; lora {}", info.modules.join(", "), info.lora);
    println!(
        "{:<48} {:>5} {:>6} {:>6} {:>9}",
        "site", "rank", "in", "out", "scale"
    );
    for f in app.factors() {
        let dim = |s: &[usize], i: usize| s.get(i).map_or("?".into(), usize::to_string);
        println!(
            "{:<48} {:>5} {:>6} {:>6} {:>9.4}",
            f.target,
            dim(&f.a.shape, 0),
            dim(&f.a.shape, 1),
            dim(&f.b.shape, 0),
            f.scale
        );
    }
    Ok(0)
}
