//! `m4c scale-report`: the paper's Fig. 11 on any model set. For N = 1…max
//! tasks it measures, from the OS, the storage (file sizes) and the peak
//! resident memory (VmHWM of a fresh child process that loads everything
//! and runs one inference) of (a) one firmware plus N adapter bundles and
//! (b) N separate task-specific models, each compiled into its own bundle;
//! and of each `--variant` (the same modules quantised, e.g. int8 and int4
//! firmware, with an adapter built for it) as for (a).
//! Writes scale.json, scale.md and scale.svg.

use std::path::{Path, PathBuf};
use std::process::Command;

use m4c_compiler::bundle::{build_firmware, write_atomically, FirmwareOptions};
use m4c_ir::DType;
use m4c_ops::Value;
use m4c_runtime::adapter::AdapterBundle;
use m4c_runtime::bundle::Bundle;
use m4c_runtime::exec::{
    executor_for, load_shared, BaseGraphs, Engine, LoadOptions, ModuleExecutor,
};
use ndarray::{ArrayD, IxDyn};
use serde::Serialize;

use super::CliResult;

/// Arguments of `m4c scale-report`.
#[derive(clap::Args)]
pub struct ScaleArgs {
    /// The firmware (shared modules).
    #[arg(long, value_name = "M4.fw")]
    firmware: PathBuf,
    /// Adapter bundles for the firmware, one per task (cycled when fewer
    /// than N: each task still gets its own file).
    #[arg(long = "adapter", value_name = "APP.m4a", num_args = 1.., required = true)]
    adapters: Vec<PathBuf>,
    /// Task-specific models (ONNX), one per task, cycled when fewer than N.
    #[arg(long = "ts", value_name = "MODEL.onnx", num_args = 1..)]
    ts: Vec<PathBuf>,
    /// Another firmware measured like --firmware, e.g. the same modules
    /// quantised (`int8:M4.int8.fw:app.int8.m4a`): a label
    /// ([A-Za-z0-9_-]), the firmware and an adapter bundle built for it
    /// (copied to N files). Repeatable.
    #[arg(long = "variant", value_name = "LABEL:M4.fw:APP.m4a")]
    variants: Vec<String>,
    /// Largest number of tasks.
    #[arg(long, default_value_t = 50)]
    max_n: usize,
    /// Where the report and the per-task files go.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Internal: measure one configuration in this process (a child).
    #[arg(long, hide = true, value_name = "fw|ts")]
    child: Option<String>,
}

/// One N: storage bytes and peak RSS of both deployments, and where the
/// resident memory is at the end of each child: anonymous pages (heap:
/// graphs, executors, activations) and file-backed pages (the executable,
/// the mapped bundles).
#[derive(Serialize)]
struct Row {
    n: usize,
    m4_storage_bytes: u64,
    m4_peak_rss_bytes: u64,
    m4_rss_anon_bytes: u64,
    m4_rss_file_bytes: u64,
    ts_storage_bytes: u64,
    ts_peak_rss_bytes: u64,
    ts_rss_anon_bytes: u64,
    ts_rss_file_bytes: u64,
    /// Each `--variant`, in the order given.
    variants: Vec<VariantRow>,
}

/// One N of a `--variant`: its firmware plus N of its adapters.
#[derive(Serialize)]
struct VariantRow {
    label: String,
    storage_bytes: u64,
    peak_rss_bytes: u64,
    rss_anon_bytes: u64,
    rss_file_bytes: u64,
}

/// A `--variant`: label, firmware, adapter.
struct Variant {
    label: String,
    firmware: PathBuf,
    adapter: PathBuf,
}

impl Variant {
    fn parse(s: &str) -> CliResult<Variant> {
        let mut parts = s.splitn(3, ':');
        let (Some(label), Some(fw), Some(app)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("--variant {s}: expected LABEL:M4.fw:APP.m4a").into());
        };
        let ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
        if label.is_empty() || !label.chars().all(ok) {
            return Err(format!("--variant {s}: label '{label}' is not [A-Za-z0-9_-]+").into());
        }
        Ok(Variant {
            label: label.into(),
            firmware: fw.into(),
            adapter: app.into(),
        })
    }
}

/// A child's memory from /proc/self/status, in bytes: VmHWM, RssAnon and
/// RssFile.
struct Memory {
    peak: u64,
    anon: u64,
    file: u64,
}

/// Runs `m4c scale-report`.
pub fn run(args: ScaleArgs) -> CliResult<i32> {
    match args.child.as_deref() {
        Some("fw") => child_firmware(&args),
        Some("ts") => child_models(&args.ts),
        Some("none") => print_memory(),
        Some(other) => Err(format!("--child {other}: expected fw, ts or none").into()),
        None => report(&args),
    }
}

/// Copies `sources` (cycled) to `n` distinct files `dir/{stem}_{i}.{ext}`.
fn copies(
    sources: &[PathBuf],
    n: usize,
    dir: &Path,
    stem: &str,
    ext: &str,
) -> CliResult<Vec<PathBuf>> {
    (0..n)
        .map(|i| {
            let to = dir.join(format!("{stem}_{i:03}.{ext}"));
            std::fs::copy(&sources[i % sources.len()], &to)
                .map_err(|e| format!("{}: {e}", to.display()))?;
            Ok(to)
        })
        .collect()
}

fn file_len(p: &Path) -> CliResult<u64> {
    Ok(std::fs::metadata(p)
        .map_err(|e| format!("{}: {e}", p.display()))?
        .len())
}

fn report(args: &ScaleArgs) -> CliResult<i32> {
    if args.ts.is_empty() {
        return Err("--ts: give at least one task-specific model".into());
    }
    if args.max_n == 0 {
        return Err("--max-n must be at least 1".into());
    }
    // Check every input before spending minutes measuring.
    let fw = Bundle::open(&args.firmware)?;
    for a in &args.adapters {
        AdapterBundle::open(a)?.check_binding(&fw)?;
    }
    let variants = args
        .variants
        .iter()
        .map(|s| Variant::parse(s))
        .collect::<CliResult<Vec<_>>>()?;
    for v in &variants {
        let fw = Bundle::open(&v.firmware)?;
        AdapterBundle::open(&v.adapter)?.check_binding(&fw)?;
    }
    let files = args.out.join("files");
    std::fs::create_dir_all(&files).map_err(|e| format!("{}: {e}", files.display()))?;
    let mut compiled = vec![];
    for (i, onnx) in args.ts.iter().enumerate() {
        let bytes = build_firmware(
            &[("model".into(), onnx.clone())],
            &FirmwareOptions::default(),
        )?;
        let path = files.join(format!("ts_model_{i}.fw"));
        write_atomically(&path, &[], &bytes)?;
        compiled.push(path);
    }
    let adapters = copies(&args.adapters, args.max_n, &files, "app", "m4a")?;
    let models = copies(&compiled, args.max_n, &files, "ts", "fw")?;
    let variant_apps = variants
        .iter()
        .map(|v| {
            copies(
                std::slice::from_ref(&v.adapter),
                args.max_n,
                &files,
                &format!("app_{}", v.label),
                "m4a",
            )
        })
        .collect::<CliResult<Vec<_>>>()?;
    let fw_len = file_len(&args.firmware)?;
    let base_args = [
        "--firmware".to_string(),
        args.firmware.display().to_string(),
        "--adapter".into(),
        adapters[0].display().to_string(),
    ];
    let baseline = measure("none", &base_args, &args.out)?.peak;
    let mut rows = vec![];
    for n in 1..=args.max_n {
        let m4_storage = fw_len
            + adapters[..n]
                .iter()
                .map(|p| file_len(p))
                .sum::<CliResult<u64>>()?;
        let ts_storage = models[..n]
            .iter()
            .map(|p| file_len(p))
            .sum::<CliResult<u64>>()?;
        let mut fw_args = vec![
            "--firmware".into(),
            args.firmware.display().to_string(),
            "--adapter".into(),
        ];
        fw_args.extend(adapters[..n].iter().map(|p| p.display().to_string()));
        let mut ts_args = vec![
            "--firmware".into(),
            args.firmware.display().to_string(),
            "--adapter".into(),
            adapters[0].display().to_string(),
            "--ts".into(),
        ];
        ts_args.extend(models[..n].iter().map(|p| p.display().to_string()));
        let (m4, ts) = (
            measure("fw", &fw_args, &args.out)?,
            measure("ts", &ts_args, &args.out)?,
        );
        let mut variant_rows = vec![];
        for (v, apps) in variants.iter().zip(&variant_apps) {
            let mut v_args = vec![
                "--firmware".into(),
                v.firmware.display().to_string(),
                "--adapter".into(),
            ];
            v_args.extend(apps[..n].iter().map(|p| p.display().to_string()));
            let mem = measure("fw", &v_args, &args.out)?;
            variant_rows.push(VariantRow {
                label: v.label.clone(),
                storage_bytes: file_len(&v.firmware)?
                    + apps[..n]
                        .iter()
                        .map(|p| file_len(p))
                        .sum::<CliResult<u64>>()?,
                peak_rss_bytes: mem.peak,
                rss_anon_bytes: mem.anon,
                rss_file_bytes: mem.file,
            });
        }
        let row = Row {
            n,
            m4_storage_bytes: m4_storage,
            m4_peak_rss_bytes: m4.peak,
            m4_rss_anon_bytes: m4.anon,
            m4_rss_file_bytes: m4.file,
            ts_storage_bytes: ts_storage,
            ts_peak_rss_bytes: ts.peak,
            ts_rss_anon_bytes: ts.anon,
            ts_rss_file_bytes: ts.file,
            variants: variant_rows,
        };
        eprintln!(
            "N={n:>3}: M4 {} B storage, {} B peak RSS; TS {} B storage, {} B peak RSS",
            row.m4_storage_bytes,
            row.m4_peak_rss_bytes,
            row.ts_storage_bytes,
            row.ts_peak_rss_bytes
        );
        rows.push(row);
    }
    let json = serde_json::json!({
        "baseline_rss_bytes": baseline,
        "firmware": args.firmware.display().to_string(),
        "adapters": args.adapters.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "ts_models": args.ts.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "variants": variants.iter().map(|v| serde_json::json!({
            "label": v.label,
            "firmware": v.firmware.display().to_string(),
            "adapter": v.adapter.display().to_string(),
        })).collect::<Vec<_>>(),
        "rows": rows,
    });
    let write = |name: &str, text: String| -> CliResult<()> {
        let p = args.out.join(name);
        Ok(m4c_runtime::outfile::write(&p, &[], text.as_bytes())?)
    };
    write("scale.json", serde_json::to_string_pretty(&json)?)?;
    write("scale.md", markdown(&rows, baseline))?;
    write("scale.svg", svg(&rows))?;
    std::fs::remove_dir_all(&files).map_err(|e| format!("{}: {e}", files.display()))?;
    println!("{}", markdown(&rows, baseline));
    println!("wrote {}/scale.{{json,md,svg}}", args.out.display());
    Ok(0)
}

/// Spawns this executable as a measuring child; its memory.
fn measure(kind: &str, child_args: &[String], out: &Path) -> CliResult<Memory> {
    let exe = std::env::current_exe()?;
    let o = Command::new(exe)
        .args(["scale-report", "--child", kind, "--out"])
        .arg(out)
        .args(child_args)
        .output()?;
    let text = String::from_utf8_lossy(&o.stdout);
    if !o.status.success() {
        return Err(format!(
            "measuring child ({kind}) failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )
        .into());
    }
    let fields: Vec<u64> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| format!("measuring child ({kind}) printed {text:?}"))?;
    match fields[..] {
        [peak, anon, file] => Ok(Memory { peak, anon, file }),
        _ => Err(format!("measuring child ({kind}) printed {text:?}").into()),
    }
}

/// Prints this process's peak RSS, RssAnon and RssFile in bytes (what a
/// child reports to [`measure`]).
fn print_memory() -> CliResult<i32> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib = |key: &str| -> CliResult<u64> {
        let line = status.lines().find(|l| l.starts_with(key)).ok_or_else(|| {
            format!("/proc/self/status has no {key} (memory is measured on Linux)")
        })?;
        let kb: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("unreadable {line:?}"))?;
        Ok(kb * 1024)
    };
    println!(
        "{} {} {}",
        kib("VmHWM:")?,
        kib("RssAnon:")?,
        kib("RssFile:")?
    );
    Ok(0)
}

/// Inputs of the right types and shapes (ones for integers: token id 1,
/// mask 1; 0.5 for floats).
fn sample_inputs(exec: &dyn ModuleExecutor) -> CliResult<Vec<Value>> {
    exec.signature()
        .inputs
        .iter()
        .map(|(name, ty)| {
            let shape = ty
                .static_shape()
                .ok_or_else(|| format!("input {name} has a symbolic shape"))?;
            let dim = IxDyn(&shape);
            Ok(match ty.dtype {
                DType::I64 => Value::I64(ArrayD::from_elem(dim, 1)),
                DType::I32 => Value::I32(ArrayD::from_elem(dim, 1)),
                DType::Bool => Value::Bool(ArrayD::from_elem(dim, true)),
                DType::F32 => Value::F32(ArrayD::from_elem(dim, 0.5)),
                other => {
                    return Err(format!("input {name}: {other} inputs are not generated").into())
                }
            })
        })
        .collect()
}

/// Child (a): the firmware and every adapter loaded, each adapter attached
/// to the modules it was built for (an interpreter per adapted module,
/// ready to run, all sharing the firmware's module graphs); one inference
/// with the last one.
fn child_firmware(args: &ScaleArgs) -> CliResult<i32> {
    let fw = Bundle::open(&args.firmware)?;
    let bases = BaseGraphs::new(&fw);
    let opts = LoadOptions {
        engine: Engine::Reference,
        ..LoadOptions::default()
    };
    let mut loaded: Vec<(AdapterBundle, Vec<std::sync::Arc<dyn ModuleExecutor>>)> = vec![];
    for path in &args.adapters {
        let a = AdapterBundle::open(path)?;
        let mut execs = vec![];
        for m in &a.info().modules {
            execs.push(load_shared(&bases, m, &[&a], &opts)?.executor);
        }
        loaded.push((a, execs));
    }
    let exec = &loaded.last().ok_or("no adapters")?.1[0];
    exec.run(&sample_inputs(&**exec)?)?;
    print_memory()
}

/// Child (b): every task-specific model loaded; one inference with the last.
fn child_models(models: &[PathBuf]) -> CliResult<i32> {
    let mut loaded = vec![];
    for path in models {
        let b = Bundle::open(path)?;
        let e = &b.manifest().modules[0];
        loaded.push((executor_for(&e.name, b.module(&e.name)?), b));
    }
    let exec = &loaded.last().ok_or("no models")?.0;
    exec.run(&sample_inputs(&**exec)?)?;
    print_memory()
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn markdown(rows: &[Row], baseline: u64) -> String {
    let mut s = format!(
        "Peak RSS of a child that loads nothing (the executable itself): {:.2} MiB.\n\n",
        mib(baseline)
    );
    s += "Anon / file: resident anonymous and file-backed memory at the end of the child.\n\n";
    s += concat!(
        "| N | M4 storage (MiB) | TS storage (MiB) | M4 peak RSS (MiB) | TS peak RSS (MiB) ",
        "| M4 anon / file (MiB) | TS anon / file (MiB) |\n",
        "|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for r in rows {
        s += &format!(
            "| {} | {:.3} | {:.3} | {:.2} | {:.2} | {:.2} / {:.2} | {:.2} / {:.2} |\n",
            r.n,
            mib(r.m4_storage_bytes),
            mib(r.ts_storage_bytes),
            mib(r.m4_peak_rss_bytes),
            mib(r.ts_peak_rss_bytes),
            mib(r.m4_rss_anon_bytes),
            mib(r.m4_rss_file_bytes),
            mib(r.ts_rss_anon_bytes),
            mib(r.ts_rss_file_bytes)
        );
    }
    let Some(first) = rows.first().filter(|r| !r.variants.is_empty()) else {
        return s;
    };
    s += "\nFirmware variants (each with N of its adapters), storage / peak RSS (MiB):\n\n| N | M4 |";
    for v in &first.variants {
        s += &format!(" {} |", v.label);
    }
    s += "\n|---:|---:|";
    s += &"---:|".repeat(first.variants.len());
    for r in rows {
        s += &format!(
            "\n| {} | {:.3} / {:.2} |",
            r.n,
            mib(r.m4_storage_bytes),
            mib(r.m4_peak_rss_bytes)
        );
        for v in &r.variants {
            s += &format!(
                " {:.3} / {:.2} |",
                mib(v.storage_bytes),
                mib(v.peak_rss_bytes)
            );
        }
    }
    s + "\n"
}

/// Picks a panel's values from a row: M4, TS, then each variant.
type Pick = fn(&Row) -> Vec<u64>;

/// Line colours: M4, TS, then the variants (cycled).
const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];

/// Two panels (storage, peak RSS) against N, M4 and TS as lines.
fn svg(rows: &[Row]) -> String {
    let (w, h, pad) = (360.0, 240.0, 48.0);
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="11">"#,
        2.0 * w,
        h + 24.0
    );
    let panels: [(&str, Pick); 2] = [
        ("(a) storage, MiB", |r| {
            [r.m4_storage_bytes, r.ts_storage_bytes]
                .into_iter()
                .chain(r.variants.iter().map(|v| v.storage_bytes))
                .collect()
        }),
        ("(b) peak RSS, MiB", |r| {
            [r.m4_peak_rss_bytes, r.ts_peak_rss_bytes]
                .into_iter()
                .chain(r.variants.iter().map(|v| v.peak_rss_bytes))
                .collect()
        }),
    ];
    let mut names = vec![
        "M4: firmware + N adapters".to_string(),
        "N task-specific models".to_string(),
    ];
    if let Some(r) = rows.first() {
        names.extend(
            r.variants
                .iter()
                .map(|v| format!("M4 {} + N adapters", v.label)),
        );
    }
    let max_n = rows.last().map_or(1, |r| r.n).max(2) as f64;
    for (p, (title, get)) in panels.iter().enumerate() {
        let x0 = p as f64 * w;
        let ymax = rows
            .iter()
            .map(|r| mib(get(r).into_iter().max().unwrap_or(0)))
            .fold(0.0, f64::max)
            * 1.1;
        let px = |n: usize| x0 + pad + (n as f64 - 1.0) / (max_n - 1.0) * (w - 1.5 * pad);
        let py = |v: f64| h - pad + 20.0 - v / ymax.max(1e-9) * (h - 1.5 * pad);
        s += &format!(r#"<text x="{}" y="14">{title}</text>"#, x0 + pad);
        s += &format!(
            r#"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#,
            px(1),
            py(0.0),
            px(max_n as usize),
            py(0.0)
        );
        s += &format!(
            r#"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#,
            px(1),
            py(0.0),
            px(1),
            py(ymax)
        );
        for k in 0..=4 {
            let v = ymax * k as f64 / 4.0;
            s += &format!(
                r#"<text x="{}" y="{}" text-anchor="end">{v:.1}</text>"#,
                px(1) - 4.0,
                py(v) + 4.0
            );
        }
        s += &format!(
            r#"<text x="{}" y="{}" text-anchor="middle">N tasks (1–{})</text>"#,
            x0 + w / 2.0,
            h + 16.0,
            max_n
        );
        for (i, name) in names.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let pts: Vec<String> = rows
                .iter()
                .map(|r| format!("{:.1},{:.1}", px(r.n), py(mib(get(r)[i]))))
                .collect();
            s += &format!(
                r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
                pts.join(" ")
            );
            s += &format!(
                r#"<text x="{}" y="{}" fill="{colour}">{name}</text>"#,
                px(1) + 8.0,
                30.0 + 14.0 * i as f64
            );
        }
    }
    s + "</svg>\n"
}
