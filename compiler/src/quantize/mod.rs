//! Post-training quantisation of ONNX models (`m4c quantize`).
//!
//! The fp32 model runs on calibration samples in the reference
//! interpreter ([`model::Runner`]: the tensors to observe are made extra
//! graph outputs, so statistics are keyed by ONNX tensor name); the
//! calibrators of [`calibrate`] turn the statistics into ranges;
//! [`rewrite`] writes a standard ONNX model onnxruntime can run too (QDQ,
//! `DynamicQuantizeLinear` + `MatMulInteger`, `com.microsoft.MatMulNBits`);
//! [`encodings`] records every scale and zero point as editable JSON;
//! [`smooth`] applies SmoothQuant before calibrating; [`report`] measures
//! the result against fp32 (see `docs/QUANTISATION.md`).

pub mod calibrate;
pub mod encodings;
pub mod model;
pub mod report;
pub mod rewrite;
pub mod scheme;
pub mod smooth;

use std::path::PathBuf;

pub use calibrate::Calibration;
pub use encodings::Encodings;
pub use model::{FloatModel, Runner, Sample};
pub use scheme::{Options, Scheme};

/// Everything that can go wrong quantising: each message names the file,
/// tensor, node or option concerned.
#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    #[error(transparent)]
    Frontend(#[from] crate::FrontendError),
    #[error(transparent)]
    Npz(#[from] m4c_runtime::NpzError),
    #[error("{file}: no array for model input '{input}' (keys: {keys})")]
    MissingInput {
        file: PathBuf,
        input: String,
        keys: String,
    },
    #[error("{file}: input '{input}': {msg}")]
    Sample {
        file: PathBuf,
        input: String,
        msg: String,
    },
    #[error("--exclude {0}: no node or operator of that name in the model")]
    UnknownExclude(String),
    #[error("{file}: {msg}")]
    Encodings { file: PathBuf, msg: String },
    #[error("tensor '{tensor}': {msg}")]
    Tensor { tensor: String, msg: String },
    #[error("{what}: {source}")]
    Run {
        what: String,
        source: m4c_ops::OpsError,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Results of the quantisation module.
pub type Result<T> = std::result::Result<T, QuantizeError>;

/// Told how far long steps (calibration passes, report runs) have got; the
/// CLI draws a progress bar with it.
pub trait Observer {
    /// A step of `total` items called `what` begins.
    fn begin(&self, total: usize, what: &str);
    /// One item of the current step is done.
    fn step(&self);
}

/// An [`Observer`] that shows nothing (tests, library callers).
pub struct Quiet;

impl Observer for Quiet {
    fn begin(&self, _: usize, _: &str) {}
    fn step(&self) {}
}

/// The outcome of [`quantize`]: the quantised model and its encodings.
pub struct Quantized {
    /// The quantised ONNX model.
    pub proto: tract_onnx::pb::ModelProto,
    /// Every scale and zero point chosen (written next to the model).
    pub encodings: Encodings,
    /// What was quantised.
    pub plan: rewrite::Plan,
    /// The fp32 model the rewrite started from (smoothed when asked).
    pub source: FloatModel,
}

impl Quantized {
    /// The quantised model's protobuf bytes (one self-contained file).
    pub fn model_bytes(&self) -> Vec<u8> {
        prost::Message::encode_to_vec(&self.proto)
    }
}

/// Quantises `model`: SmoothQuant when asked, calibration of the
/// activations that need it over `samples` (skipped for those `prior`
/// encodings cover), then the rewrite of [`rewrite::quantize_graph`].
pub fn quantize(
    model: &FloatModel,
    samples: &[Sample],
    opts: &Options,
    prior: Option<&Encodings>,
    observer: &dyn Observer,
) -> Result<Quantized> {
    let exclude = rewrite::resolve_excludes(&model.proto, &opts.exclude)?;
    let mut source = model.clone();
    if let Some(alpha) = opts.smooth {
        smooth::apply(&mut source, samples, alpha, &exclude, observer)?;
    }
    let mut plan = rewrite::plan(&source.proto, opts.scheme, &exclude, prior)?;
    let mut encodings = Encodings::new(model, opts);
    if let Some(prior) = prior {
        encodings.layers = prior.layers.clone();
    }
    let needed: Vec<String> = plan
        .activations
        .iter()
        .filter(|a| prior.and_then(|p| p.activations.get(*a)).is_none())
        .cloned()
        .collect();
    if !needed.is_empty() && samples.is_empty() {
        return Err(QuantizeError::Invalid(format!(
            "activation '{}' ({} in all) has no encoding: give calibration data (--calibrate)",
            needed[0],
            needed.len()
        )));
    }
    let ranges = calibrate::calibrate(&source, samples, &needed, opts.calibration, observer)?;
    for name in &plan.activations {
        let enc = match prior.and_then(|p| p.activations.get(name)) {
            Some(e) => e.clone(),
            None => scheme::activation_encoding(ranges[name], opts.symmetric),
        };
        encodings.activations.insert(name.clone(), enc);
    }
    let proto = rewrite::quantize_graph(&source, &mut plan, opts, &encodings)?;
    encodings.weights = plan.weights.clone();
    Ok(Quantized {
        proto,
        encodings,
        plan,
        source,
    })
}
