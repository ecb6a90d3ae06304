//! `m4c npu explore`: a set of models simulated over a grid of NPU
//! machines (array shape × SRAM × DRAM bandwidth), in parallel, as a
//! hardware team sizes an accelerator: a table of latency, energy and
//! utilisation per model and machine, and the latency/area Pareto front.
//!
//! Each model is lowered, optimised and calibrated once (on
//! `MODEL.inputs.npz` beside it when there is one, else on deterministic
//! pseudo-random inputs); each machine is a variant of `--base` written as
//! a `.toml` file, compiled for and simulated like `m4c bench --backend
//! npu:FILE`. A model or machine that fails is a row with its reason.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use m4c_compiler::coverage::svg::{colour, Anchor, Svg};
use m4c_ir::Graph;
use m4c_npu::config::MachineConfig;
use m4c_ops::Value;
use rayon::prelude::*;
use serde::Serialize;

use crate::cli::model_args::{load_with_inputs, DimArgs};
use crate::cli::CliResult;

/// Arguments of `m4c npu explore`.
#[derive(clap::Args)]
#[command(after_help = "\
Example: m4c npu explore tests/fixtures/clip_vision.onnx tests/fixtures/distilbert.onnx \
--array 16x16,32x32,64x64 --sram 128,512 --out explore/

Prints a Markdown table (one row per model and machine; `*` marks the latency/area Pareto \
front of each model). With --out DIR, explore.md, explore.csv, explore.json and pareto.svg \
(latency against the area proxy PEs × SRAM MiB, one colour per model, the front joined) \
are written there, each complete or not at all. Exit 2 on bad arguments or when no model \
could be prepared; a machine that fails for one model is a row with its reason.")]
pub struct ExploreArgs {
    /// The models (.onnx or .ir); each calibrates on MODEL.inputs.npz beside
    /// it when present (its shapes pin symbolic dimensions), else on
    /// deterministic pseudo-random inputs.
    #[arg(required = true)]
    models: Vec<PathBuf>,
    /// The machine the grid varies: a preset (edge-small, phone-flagship)
    /// or a .toml/.json file.
    #[arg(long, default_value = "edge-small")]
    base: String,
    /// Systolic array shapes, ROWSxCOLS, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "16x16,32x32,64x64,128x128"
    )]
    array: Vec<String>,
    /// Weight and activation SRAM sizes in KiB (each SRAM), comma-separated
    /// [default: the base machine's].
    #[arg(long, value_delimiter = ',')]
    sram: Vec<u32>,
    /// DRAM bandwidth of each DMA engine in bytes per cycle, comma-separated
    /// [default: the base machine's].
    #[arg(long = "dram-bw", value_delimiter = ',')]
    dram_bw: Vec<u32>,
    /// Simulations run at once [default: the cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Write explore.md, explore.csv, explore.json and pareto.svg here.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    dims: DimArgs,
}

/// One model on one machine (the rows of every output).
#[derive(Clone, Debug, Serialize)]
pub struct Point {
    /// The model's file name.
    pub model: String,
    /// The machine's name (`RxC-sramK-bwB`).
    pub config: String,
    /// Array rows × columns.
    pub array: (u32, u32),
    /// Each SRAM's size, KiB.
    pub sram_kib: u32,
    /// Bytes per cycle of each DMA engine.
    pub dram_bytes_per_cycle: u32,
    /// PEs × (weight + activation SRAM MiB): the area proxy.
    pub area: f64,
    /// What the simulator measured, or why it could not run.
    pub result: Result<Measured, String>,
    /// On the model's latency/area Pareto front.
    pub pareto: bool,
}

/// What one simulation measured (as `m4c bench --backend npu --json`).
#[derive(Clone, Debug, Serialize)]
pub struct Measured {
    /// Simulated NPU cycles, all layers.
    pub cycles: u64,
    /// Latency at the machine's clock (NPU + boundary estimate), ms.
    pub latency_ms: f64,
    /// Simulated energy, mJ.
    pub energy_mj: f64,
    /// MACs / (PEs × cycles).
    pub mac_utilization: f64,
    /// DRAM bytes moved.
    pub dram_bytes: u64,
    /// Parts that fell back to the CPU.
    pub fallback_parts: usize,
}

/// Runs the exploration; see the `after_help` text.
pub fn run(args: ExploreArgs) -> CliResult<i32> {
    if let Some(dir) = &args.out {
        let inputs: Vec<&Path> = args.models.iter().map(PathBuf::as_path).collect();
        let exists = std::fs::symlink_metadata(dir).is_ok();
        m4c_runtime::outfile::check(dir, &inputs, exists)?;
    }
    let machines = grid(&args)?;
    let scratch =
        tempfile::tempdir().map_err(|e| format!("cannot create a temporary folder: {e}"))?;
    let mut files = vec![];
    for m in &machines {
        let path = scratch.path().join(format!("{}.toml", m.name));
        std::fs::write(&path, m.to_commented_toml())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        files.push(path.display().to_string());
    }
    let models: Vec<(String, Result<Prepared, String>)> = args
        .models
        .iter()
        .map(|p| {
            (
                file_name(p),
                prepare(p, &args.dims).map_err(|e| e.to_string()),
            )
        })
        .collect();
    if models.iter().all(|(_, m)| m.is_err()) {
        let first = models
            .iter()
            .find_map(|(n, m)| m.as_ref().err().map(|e| format!("{n}: {e}")));
        return Err(format!(
            "no model could be prepared; first: {}",
            first.unwrap_or_default()
        )
        .into());
    }
    let jobs: Vec<(usize, usize)> = (0..models.len())
        .flat_map(|i| (0..machines.len()).map(move |j| (i, j)))
        .collect();
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(m4c_cpu_device::check_threads(threads.max(1))?)
        .build()
        .map_err(|e| format!("cannot start {threads} threads: {e}"))?;
    let progress = crate::cli::progress::Progress::bar(jobs.len(), "simulations");
    let mut points: Vec<Point> = pool.install(|| {
        jobs.par_iter()
            .map(|&(i, j)| {
                let (model, prepared) = &models[i];
                let m = &machines[j];
                progress.item(format!("{model} on {}", m.name));
                let result = match prepared {
                    Ok(p) => simulate(p, &files[j]).map_err(|e| e.to_string()),
                    Err(e) => Err(e.clone()),
                };
                progress.inc();
                point(model, m, result)
            })
            .collect()
    });
    drop(progress);
    mark_pareto(&mut points);
    let table = markdown(&args.base, &points);
    print!("{table}");
    if let Some(dir) = &args.out {
        let inputs: Vec<&Path> = args.models.iter().map(PathBuf::as_path).collect();
        let files = [
            ("explore.md", table),
            ("explore.csv", csv(&points)),
            (
                "explore.json",
                serde_json::to_string_pretty(&points)? + "\n",
            ),
            ("pareto.svg", pareto_svg(&points)),
        ];
        crate::cli::coverage::write_all(dir, &inputs, &files)?;
        eprintln!("wrote {}", dir.display());
    }
    Ok(0)
}

/// The machines of the grid: `--base` with each array shape, SRAM size and
/// DRAM bandwidth, each validated (a bad value names the field).
fn grid(args: &ExploreArgs) -> CliResult<Vec<MachineConfig>> {
    let base = MachineConfig::load(&args.base)?;
    let arrays = args
        .array
        .iter()
        .map(|a| {
            let (r, c) = a
                .split_once('x')
                .and_then(|(r, c)| Some((r.trim().parse().ok()?, c.trim().parse().ok()?)))
                .ok_or_else(|| format!("--array {a}: expected ROWSxCOLS, e.g. 32x32"))?;
            Ok((r, c))
        })
        .collect::<Result<Vec<(u32, u32)>, String>>()?;
    let srams = if args.sram.is_empty() {
        vec![base.act_sram_bytes / 1024]
    } else {
        args.sram.clone()
    };
    let bws = if args.dram_bw.is_empty() {
        vec![base.dma_in.bytes_per_cycle]
    } else {
        args.dram_bw.clone()
    };
    let mut out = vec![];
    for &(rows, cols) in &arrays {
        for &kib in &srams {
            for &bw in &bws {
                let mut m = base.clone();
                m.name = format!("{rows}x{cols}-sram{kib}k-bw{bw}");
                m.array_rows = rows;
                m.array_cols = cols;
                let bytes = kib
                    .checked_mul(1024)
                    .ok_or_else(|| format!("--sram {kib}: too large"))?;
                m.weight_sram_bytes = bytes;
                m.act_sram_bytes = bytes;
                m.dma_in.bytes_per_cycle = bw;
                m.dma_out.bytes_per_cycle = bw;
                m.validate()?;
                out.push(m);
            }
        }
    }
    Ok(out)
}

/// A model lowered, optimised for the NPU, with its inputs and calibration.
struct Prepared {
    graph: Graph,
    feeds: Vec<Value>,
    calibration: m4c_npu_codegen::calibrate::Calibration,
}

/// Lowers (with its inputs, as `partition` does), optimises and
/// calibrates the model at `path`.
fn prepare(path: &Path, dims: &DimArgs) -> CliResult<Prepared> {
    let (model, graph, feeds, _) = load_with_inputs(path, dims)?;
    let cost = m4c_backends::lookup("npu")?.cost_model();
    let graph = if model.is_ir() {
        graph
    } else {
        m4c_compiler::opt::optimise(&graph, &Default::default(), &cost)?.0
    };
    let calibration = m4c_npu_codegen::calibrate::calibrate(&graph, std::slice::from_ref(&feeds))?;
    Ok(Prepared {
        graph,
        feeds,
        calibration,
    })
}

/// Compiles the prepared model for the machine in `config` and simulates it.
fn simulate(p: &Prepared, config: &str) -> CliResult<Measured> {
    let request = crate::cli::npu_backend::NpuRequest {
        target: Some(config.into()),
        threads: 1,
        strict: false,
        layer_by_layer: false,
    };
    let (module, artifact) =
        crate::cli::npu_backend::compile_calibrated(&p.graph, &p.calibration, &request)?;
    let (_, figures) = module.run_measured(&p.feeds, 1)?;
    let r = crate::cli::npu_backend::report(&module, &artifact, figures);
    Ok(Measured {
        cycles: r.cycles,
        latency_ms: r.latency_ms,
        energy_mj: r.energy_mj,
        mac_utilization: r.mac_utilization,
        dram_bytes: r.dram_bytes,
        fallback_parts: r.fallback_parts,
    })
}

fn point(model: &str, m: &MachineConfig, result: Result<Measured, String>) -> Point {
    let pes = f64::from(m.array_rows) * f64::from(m.array_cols);
    let sram_mib = f64::from(m.weight_sram_bytes) + f64::from(m.act_sram_bytes);
    Point {
        model: model.to_string(),
        config: m.name.clone(),
        array: (m.array_rows, m.array_cols),
        sram_kib: m.act_sram_bytes / 1024,
        dram_bytes_per_cycle: m.dma_in.bytes_per_cycle,
        area: pes * sram_mib / (1024.0 * 1024.0),
        result,
        pareto: false,
    }
}

/// Marks, per model, the points no other point beats on both latency and
/// area (ties kept).
fn mark_pareto(points: &mut [Point]) {
    let key = |p: &Point| p.result.as_ref().ok().map(|m| (p.area, m.latency_ms));
    let all: Vec<(String, Option<(f64, f64)>)> =
        points.iter().map(|p| (p.model.clone(), key(p))).collect();
    for p in points.iter_mut() {
        let Some((area, latency)) = key(p) else {
            continue;
        };
        p.pareto = !all.iter().any(|(model, other)| {
            *model == p.model
                && other
                    .is_some_and(|(a, l)| a <= area && l <= latency && (a < area || l < latency))
        });
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into())
}

/// The table: per model, its machines by latency.
fn markdown(base: &str, points: &[Point]) -> String {
    let mut rows: Vec<&Point> = points.iter().collect();
    rows.sort_by(|a, b| {
        let l = |p: &Point| p.result.as_ref().map_or(f64::INFINITY, |m| m.latency_ms);
        a.model.cmp(&b.model).then(l(a).total_cmp(&l(b)))
    });
    let mut s = format!(
        "NPU exploration from `{base}` (simulated; `*` = latency/area Pareto front of the model)\n\n\
         | model | machine | PEs×SRAM MiB | cycles | latency ms | energy mJ | MAC util | DRAM B | CPU parts |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for p in rows {
        let star = if p.pareto { " *" } else { "" };
        let _ = match &p.result {
            Ok(m) => writeln!(
                s,
                "| {} | {}{star} | {:.1} | {} | {:.4} | {:.6} | {:.2} % | {} | {} |",
                p.model,
                p.config,
                p.area,
                m.cycles,
                m.latency_ms,
                m.energy_mj,
                100.0 * m.mac_utilization,
                m.dram_bytes,
                m.fallback_parts
            ),
            Err(e) => writeln!(
                s,
                "| {} | {} | {:.1} | failed: {} | | | | | |",
                p.model,
                p.config,
                p.area,
                e.replace('|', "\\|")
            ),
        };
    }
    s
}

/// Every point as CSV.
fn csv(points: &[Point]) -> String {
    let mut s = String::from(
        "model,config,array_rows,array_cols,sram_kib,dram_bytes_per_cycle,area,pareto,cycles,latency_ms,energy_mj,mac_utilization,dram_bytes,fallback_parts,error\n",
    );
    let quote = |t: &str| format!("\"{}\"", t.replace('"', "\"\""));
    for p in points {
        let _ = write!(
            s,
            "{},{},{},{},{},{},{:.4},{},",
            quote(&p.model),
            quote(&p.config),
            p.array.0,
            p.array.1,
            p.sram_kib,
            p.dram_bytes_per_cycle,
            p.area,
            p.pareto
        );
        let _ = match &p.result {
            Ok(m) => writeln!(
                s,
                "{},{:.6},{:.9},{:.6},{},{},",
                m.cycles,
                m.latency_ms,
                m.energy_mj,
                m.mac_utilization,
                m.dram_bytes,
                m.fallback_parts
            ),
            Err(e) => writeln!(s, ",,,,,,{}", quote(e)),
        };
    }
    s
}

/// Decades covering `lo..=hi` (both > 0), for a log axis.
fn decades(lo: f64, hi: f64) -> (f64, f64) {
    let lo = 10f64.powf(lo.log10().floor());
    let hi = 10f64.powf(hi.log10().ceil()).max(lo * 10.0);
    (lo, hi)
}

/// Latency against area, log–log, one colour per model, each model's
/// Pareto front joined by a line and labelled with its machines.
fn pareto_svg(points: &[Point]) -> String {
    let ok: Vec<(&Point, &Measured)> = points
        .iter()
        .filter_map(|p| p.result.as_ref().ok().map(|m| (p, m)))
        .filter(|(p, m)| p.area > 0.0 && m.latency_ms > 0.0)
        .collect();
    let mut models: Vec<&str> = ok.iter().map(|(p, _)| p.model.as_str()).collect();
    models.sort_unstable();
    models.dedup();
    let (left, right, top, bottom) = (72.0, 220.0, 40.0, 56.0);
    let (width, height) = (760.0, 460.0);
    let (plot_w, plot_h) = (width - left - right, height - top - bottom);
    let fold = |f: &dyn Fn(&(&Point, &Measured)) -> f64| {
        ok.iter()
            .map(f)
            .fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            })
    };
    let (ax, ay) = (fold(&|(p, _)| p.area), fold(&|(_, m)| m.latency_ms));
    let mut svg = Svg::new(width, height);
    svg.text(
        (left + plot_w / 2.0, 24.0),
        "NPU machines: simulated latency against area (PEs × SRAM)",
        Anchor::Middle,
        14.0,
    );
    if ok.is_empty() {
        svg.text(
            (width / 2.0, height / 2.0),
            "no simulation succeeded",
            Anchor::Middle,
            12.0,
        );
        return svg.finish();
    }
    let ((x0, x1), (y0, y1)) = (decades(ax.0, ax.1), decades(ay.0, ay.1));
    let px = |a: f64| left + plot_w * (a.log10() - x0.log10()) / (x1.log10() - x0.log10());
    let py = |l: f64| top + plot_h * (1.0 - (l.log10() - y0.log10()) / (y1.log10() - y0.log10()));
    let mut tick = x0;
    while tick <= x1 * 1.0001 {
        let x = px(tick);
        svg.line((x, top), (x, top + plot_h), "#e5e5e5", 1.0);
        svg.text(
            (x, top + plot_h + 18.0),
            &format!("{tick:e}"),
            Anchor::Middle,
            10.0,
        );
        tick *= 10.0;
    }
    let mut tick = y0;
    while tick <= y1 * 1.0001 {
        let y = py(tick);
        svg.line((left, y), (left + plot_w, y), "#e5e5e5", 1.0);
        svg.text(
            (left - 6.0, y + 4.0),
            &format!("{tick:e}"),
            Anchor::End,
            10.0,
        );
        tick *= 10.0;
    }
    svg.line((left, top), (left, top + plot_h), "#333333", 1.0);
    svg.line(
        (left, top + plot_h),
        (left + plot_w, top + plot_h),
        "#333333",
        1.0,
    );
    svg.text(
        (left + plot_w / 2.0, height - 14.0),
        "area proxy: PEs × SRAM MiB (log)",
        Anchor::Middle,
        12.0,
    );
    svg.vertical_text((18.0, top + plot_h / 2.0), "latency ms (log)", 12.0);
    for (i, model) in models.iter().enumerate() {
        let mut front: Vec<(f64, f64, &str)> = vec![];
        for (p, m) in ok.iter().filter(|(p, _)| p.model == *model) {
            let at = (px(p.area), py(m.latency_ms));
            svg.circle(at, if p.pareto { 4.0 } else { 2.5 }, colour(i));
            if p.pareto {
                front.push((at.0, at.1, &p.config));
            }
        }
        front.sort_by(|a, b| a.0.total_cmp(&b.0));
        let line: Vec<(f64, f64)> = front.iter().map(|&(x, y, _)| (x, y)).collect();
        svg.polyline(&line, colour(i), 1.5);
        for &(x, y, name) in &front {
            svg.text((x + 6.0, y - 6.0), name, Anchor::Start, 9.0);
        }
        let ly = top + 10.0 + 20.0 * i as f64;
        let lx = left + plot_w + 16.0;
        svg.circle((lx + 6.0, ly - 4.0), 4.0, colour(i));
        svg.text((lx + 16.0, ly), model, Anchor::Start, 10.0);
    }
    svg.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(model: &str, area: f64, latency: f64) -> Point {
        Point {
            model: model.into(),
            config: format!("{area}"),
            array: (1, 1),
            sram_kib: 1,
            dram_bytes_per_cycle: 1,
            area,
            result: Ok(Measured {
                cycles: 1,
                latency_ms: latency,
                energy_mj: 0.0,
                mac_utilization: 0.0,
                dram_bytes: 0,
                fallback_parts: 0,
            }),
            pareto: false,
        }
    }

    #[test]
    fn the_front_keeps_only_undominated_points_per_model() {
        let mut points = vec![
            p("a", 1.0, 10.0),
            p("a", 2.0, 5.0),
            p("a", 3.0, 6.0), // beaten by (2, 5)
            p("a", 4.0, 1.0),
            p("b", 3.0, 6.0), // alone in its model
        ];
        mark_pareto(&mut points);
        let front: Vec<bool> = points.iter().map(|p| p.pareto).collect();
        assert_eq!(front, [true, true, false, true, true]);
    }

    #[test]
    fn decades_cover_the_range() {
        assert_eq!(decades(0.3, 42.0), (0.1, 100.0));
        assert_eq!(decades(5.0, 5.0), (1.0, 10.0));
    }
}
