//! `m4c quantize`: post-training quantisation of an ONNX model into a
//! standard ONNX model (QDQ, `MatMulInteger`, `MatMulNBits`) plus its
//! encodings file, and optionally an accuracy report
//! (`docs/QUANTISATION.md`).

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use m4c_compiler::quantize::{
    self, report, Calibration, Encodings, FloatModel, Observer, Options, Scheme,
};

use super::progress::Progress;
use super::CliResult;

/// Arguments of `m4c quantize`.
#[derive(clap::Args)]
pub struct QuantizeArgs {
    /// The fp32 ONNX model.
    model: PathBuf,
    /// Calibration inputs: .npz files keyed by the model's input names; an
    /// array with one more leading axis than the input holds a stack of
    /// samples (an input given once applies to all). Every sample runs
    /// through the fp32 model.
    #[arg(long = "calibrate", value_name = "DATA.npz", num_args = 1..)]
    calibrate: Vec<PathBuf>,
    /// int8 (static QDQ), int8-dynamic, w8 (weight-only int8) or
    /// w4[:GROUP] (MatMulNBits, group 32 by default). Default by module
    /// kind: w4 for a decoder (rank-3 logits or a KV cache), int8 per
    /// channel for anything else.
    #[arg(long, value_name = "SCHEME", value_parser = |s: &str| s.parse::<Scheme>())]
    scheme: Option<Scheme>,
    /// int8 weights with one scale per output channel.
    #[arg(long)]
    per_channel: bool,
    /// Symmetric activations (zero point 0) and int4 blocks (zero point 8).
    #[arg(long)]
    symmetric: bool,
    /// How activation ranges are chosen: minmax, percentile:P or entropy.
    #[arg(long, value_name = "METHOD", default_value = "minmax", value_parser = |s: &str| s.parse::<Calibration>())]
    calibration: Calibration,
    /// Leave these nodes (ONNX node names) or operator types in fp32.
    #[arg(long, value_name = "NODE|OP", num_args = 1..)]
    exclude: Vec<String>,
    /// SmoothQuant with migration strength ALPHA (0–1, typically 0.5).
    #[arg(long, value_name = "ALPHA")]
    smooth: Option<f32>,
    /// `w4`: bits of a MatMul writing a graph output (an LLM's lm_head).
    #[arg(long, value_name = "4|8", default_value_t = quantize::scheme::DEFAULT_HEAD_BITS,
          value_parser = head_bits)]
    head_bits: u8,
    /// `w4`: MatMulNBits' accuracy_level (0–4; 0 leaves it unset). 4
    /// allows int8 compute: activations are quantised to int8 per block
    /// at run time and multiplied as integers (faster decode, slightly
    /// less accurate), by m4c's CPU backend and by onnxruntime alike.
    #[arg(long, value_name = "0-4", default_value_t = 0,
          value_parser = clap::value_parser!(u8).range(0..=4))]
    accuracy_level: u8,
    /// Encodings from an earlier run (possibly edited): their activation
    /// scales and per-layer overrides are used instead of calibrating.
    #[arg(long, value_name = "E.json")]
    encodings: Option<PathBuf>,
    /// Write an accuracy report (report.md, report.json, sqnr.svg) here.
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,
    /// The quantised model; its encodings go to OUT.encodings.json.
    #[arg(short = 'o', long = "output", value_name = "OUT.onnx")]
    output: PathBuf,
}

/// Draws the library's progress steps as bars on stderr.
struct Bars(RefCell<Option<Progress>>);

impl Observer for Bars {
    fn begin(&self, total: usize, what: &str) {
        *self.0.borrow_mut() = Some(Progress::bar(total, what));
    }
    fn step(&self) {
        if let Some(p) = self.0.borrow().as_ref() {
            p.inc();
        }
    }
}

/// Where the encodings of `OUT.onnx` go: `OUT.encodings.json`.
fn encodings_path(output: &Path) -> PathBuf {
    output.with_extension("encodings.json")
}

/// `--head-bits`: 4 or 8.
fn head_bits(s: &str) -> Result<u8, String> {
    match s {
        "4" => Ok(4),
        "8" => Ok(8),
        _ => Err(format!("'{s}' is not 4 or 8")),
    }
}

/// Runs `m4c quantize`.
pub fn run(args: QuantizeArgs) -> CliResult<i32> {
    let mut inputs: Vec<&Path> = vec![&args.model];
    inputs.extend(args.calibrate.iter().map(PathBuf::as_path));
    inputs.extend(args.encodings.as_deref());
    let enc_out = encodings_path(&args.output);
    m4c_runtime::outfile::check(&args.output, &inputs, false)?;
    m4c_runtime::outfile::check(&enc_out, &inputs, false)?;
    if let Some(dir) = &args.report {
        m4c_runtime::outfile::check(dir, &inputs, true)?;
        if args.calibrate.is_empty() {
            return Err("--report measures on the calibration samples: give --calibrate".into());
        }
    }
    let model = FloatModel::load(&args.model)?;
    let (scheme, per_channel, chosen) = match args.scheme {
        Some(s) => (s, args.per_channel, ""),
        None => {
            let (s, pc) = Scheme::default_for(&model);
            (
                s,
                pc || args.per_channel,
                ", the default for this kind of module",
            )
        }
    };
    if args.accuracy_level > 0 && !matches!(scheme, Scheme::W4 { .. }) {
        return Err(format!(
            "--accuracy-level sets MatMulNBits' attribute: it needs --scheme w4 (this is {scheme})"
        )
        .into());
    }
    let opts = Options {
        scheme,
        per_channel,
        symmetric: args.symmetric,
        calibration: args.calibration,
        exclude: args.exclude.clone(),
        smooth: args.smooth,
        head_bits: args.head_bits,
        accuracy_level: args.accuracy_level,
    };
    let prior = args
        .encodings
        .as_deref()
        .map(|p| Encodings::read(p, &model))
        .transpose()?;
    let samples = quantize::model::load_samples(&args.calibrate, &model.inputs())?;
    let bars = Bars(RefCell::new(None));
    let q = quantize::quantize(&model, &samples, &opts, prior.as_ref(), &bars)?;
    m4c_runtime::outfile::write(&args.output, &inputs, &q.model_bytes())?;
    m4c_runtime::outfile::write(&enc_out, &inputs, q.encodings.to_json().as_bytes())?;
    println!(
        "{}: {} layer(s) quantised ({scheme}{}{chosen}), {} activation encoding(s), {} weight(s); encodings in {}",
        args.output.display(),
        q.plan.layers.len(),
        if per_channel { " per channel" } else { "" },
        q.encodings.activations.len(),
        q.encodings.weights.len(),
        enc_out.display()
    );
    if let Some(dir) = &args.report {
        let r = report::measure(&model, &q, &opts, &samples, &bars)?;
        drop(bars);
        super::coverage::write_all(
            dir,
            &inputs,
            &[
                ("report.md", r.to_markdown()),
                ("report.json", r.to_json()),
                ("sqnr.svg", r.to_svg()),
            ],
        )?;
        for o in &r.outputs {
            let mut line = format!(
                "{}: cosine {:.6}, SQNR {:.1} dB, max abs {:.3e}",
                o.name, o.cosine, o.sqnr_db, o.max_abs
            );
            if let (Some(t), Some(k)) = (o.top1_agreement, o.kl_divergence) {
                line += &format!(", top-1 agreement {:.1} %, KL {k:.2e}", t * 100.0);
            }
            println!("{line}");
        }
        println!("report: {}", dir.join("report.md").display());
    }
    Ok(0)
}
