//! The encodings file: every activation's scale and zero point, how each
//! weight was quantised, and per-layer overrides, as JSON a person can
//! edit and give back with `--encodings`. It is bound to its model by a
//! fingerprint of the graph's structure, so it cannot silently apply to
//! another model.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::model::{graph, FloatModel};
use super::scheme::{ActEncoding, Options, Scheme};
use super::{Calibration, QuantizeError, Result};

/// The `format` of files this version writes and reads.
pub const FORMAT: &str = "m4c-encodings/1";

/// Largest encodings file read (a hostile file is refused, not allocated).
const MAX_BYTES: u64 = 256 << 20;

/// Which model an encodings file belongs to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelId {
    /// The graph's name.
    pub graph: String,
    /// [`fingerprint`] of the fp32 model.
    pub fingerprint: String,
}

/// How one weight was quantised (its scales follow from its values and
/// these parameters, so they are not listed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WeightEncoding {
    /// The node (ONNX name) reading it.
    pub node: String,
    /// 8 or 4.
    pub bits: u8,
    /// The per-channel axis of int8 weights; none when per tensor.
    pub axis: Option<i64>,
    /// The block size along K of int4 weights.
    pub block_size: Option<usize>,
    /// Zero point 0 (int8) or 8 (int4).
    pub symmetric: bool,
    /// The largest |w| (for a quick look at outliers).
    pub absmax: f32,
}

/// A per-layer override, keyed by ONNX node name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerOverride {
    /// `false` leaves the node in fp32.
    #[serde(default = "yes")]
    pub quantize: bool,
    /// int8 weights of this node per channel (`true`) or per tensor.
    #[serde(default)]
    pub per_channel: Option<bool>,
    /// `w4`: this node's `MatMulNBits` bits, 4 or 8 (overrides the
    /// default: 8 for a MatMul writing a graph output, else 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bits: Option<u8>,
}

fn yes() -> bool {
    true
}

/// The contents of an encodings file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Encodings {
    /// Always [`FORMAT`].
    pub format: String,
    /// The model these encodings are for.
    pub model: ModelId,
    /// The scheme written.
    pub scheme: Scheme,
    /// Whether int8 weights are per channel by default.
    pub per_channel: bool,
    /// Whether activations are symmetric.
    pub symmetric: bool,
    /// How ranges were calibrated.
    pub calibration: Calibration,
    /// Activation scale and zero point by ONNX tensor name.
    #[serde(default)]
    pub activations: BTreeMap<String, ActEncoding>,
    /// Quantised weights by initializer name.
    #[serde(default)]
    pub weights: BTreeMap<String, WeightEncoding>,
    /// Per-layer overrides by ONNX node name.
    #[serde(default)]
    pub layers: BTreeMap<String, LayerOverride>,
}

/// A short hash of the model's structure: node types, names and wiring,
/// graph inputs and outputs (weights excluded: SmoothQuant edits them).
pub fn fingerprint(model: &FloatModel) -> String {
    let g = graph(&model.proto);
    let mut h = blake3::Hasher::new();
    let mut put = |s: &str| {
        h.update(s.as_bytes());
        h.update(&[0]);
    };
    for i in &g.input {
        put(&i.name);
    }
    for n in &g.node {
        put(&n.op_type);
        put(&n.name);
        n.input.iter().chain(&n.output).for_each(|s| put(s));
    }
    for o in &g.output {
        put(&o.name);
    }
    h.finalize().to_hex()[..16].to_string()
}

impl Encodings {
    /// Empty encodings for `model` quantised with `opts`.
    pub fn new(model: &FloatModel, opts: &Options) -> Encodings {
        Encodings {
            format: FORMAT.to_string(),
            model: ModelId {
                graph: graph(&model.proto).name.clone(),
                fingerprint: fingerprint(model),
            },
            scheme: opts.scheme,
            per_channel: opts.per_channel,
            symmetric: opts.symmetric,
            calibration: opts.calibration,
            activations: BTreeMap::new(),
            weights: BTreeMap::new(),
            layers: BTreeMap::new(),
        }
    }

    /// The file's JSON text.
    #[allow(
        clippy::expect_used,
        reason = "plain data with string keys always serialises"
    )]
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("encodings serialise") + "\n"
    }

    /// Reads `path` and checks it belongs to `model`: the fingerprint,
    /// every tensor and node it names, every scale and zero point.
    pub fn read(path: &Path, model: &FloatModel) -> Result<Encodings> {
        let err = |msg: String| QuantizeError::Encodings {
            file: path.to_path_buf(),
            msg,
        };
        let bytes = m4c_runtime::input_file::read_regular(path, MAX_BYTES)
            .map_err(|e| err(e.to_string()))?;
        let e: Encodings = serde_json::from_slice(&bytes)
            .map_err(|e| err(format!("not an encodings file ({e})")))?;
        e.check(model).map_err(err)?;
        Ok(e)
    }

    /// The consistency checks of [`Encodings::read`].
    fn check(&self, model: &FloatModel) -> std::result::Result<(), String> {
        if self.format != FORMAT {
            return Err(format!("format '{}' is not {FORMAT}", self.format));
        }
        let fp = fingerprint(model);
        if self.model.fingerprint != fp {
            return Err(format!(
                "encodings are for model '{}' (fingerprint {}), not for {} (fingerprint {fp})",
                self.model.graph,
                self.model.fingerprint,
                model.path.display()
            ));
        }
        let g = graph(&model.proto);
        let tensors: HashSet<&str> = g
            .input
            .iter()
            .map(|i| i.name.as_str())
            .chain(
                g.node
                    .iter()
                    .flat_map(|n| n.output.iter().map(String::as_str)),
            )
            .collect();
        let nodes: HashSet<&str> = g.node.iter().map(|n| n.name.as_str()).collect();
        let inits: HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
        for (name, a) in &self.activations {
            if !tensors.contains(name.as_str()) {
                return Err(format!("activation '{name}' is not a tensor of the model"));
            }
            a.check().map_err(|m| format!("activation '{name}': {m}"))?;
        }
        if let Some(w) = self.weights.keys().find(|w| !inits.contains(w.as_str())) {
            return Err(format!("weight '{w}' is not an initializer of the model"));
        }
        if let Some(l) = self.layers.keys().find(|l| !nodes.contains(l.as_str())) {
            return Err(format!("layer '{l}' is not a node of the model"));
        }
        for (name, l) in &self.layers {
            if let Some(b) = l.bits.filter(|b| *b != 4 && *b != 8) {
                return Err(format!("layer '{name}': bits {b} is not 4 or 8"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use tract_onnx::pb::{GraphProto, ModelProto, NodeProto, ValueInfoProto};

    fn model(op: &str) -> FloatModel {
        let node = NodeProto {
            op_type: op.into(),
            name: "n0".into(),
            input: vec!["x".into()],
            output: vec!["y".into()],
            ..Default::default()
        };
        FloatModel {
            path: PathBuf::from("m.onnx"),
            proto: ModelProto {
                graph: Some(GraphProto {
                    name: "g".into(),
                    node: vec![node],
                    input: vec![ValueInfoProto {
                        name: "x".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            },
        }
    }

    fn opts() -> Options {
        Options {
            scheme: Scheme::Int8,
            per_channel: true,
            symmetric: false,
            calibration: Calibration::MinMax,
            exclude: vec![],
            smooth: None,
            head_bits: 8,
            accuracy_level: 0,
        }
    }

    #[test]
    fn round_trips_and_binds_to_its_model() {
        let m = model("Relu");
        let mut e = Encodings::new(&m, &opts());
        e.activations.insert(
            "y".into(),
            ActEncoding {
                scale: 0.5,
                zero_point: 3,
                min: -1.0,
                max: 2.0,
            },
        );
        let back: Encodings = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.check(&m), Ok(()));
        // Another structure: a different fingerprint, refused by name.
        let other = model("Sigmoid");
        assert!(back
            .check(&other)
            .unwrap_err()
            .contains("encodings are for model 'g'"));
    }

    #[test]
    fn unknown_names_and_bad_scales_are_refused() {
        let m = model("Relu");
        let mut e = Encodings::new(&m, &opts());
        let a = ActEncoding {
            scale: 0.0,
            zero_point: 0,
            min: 0.0,
            max: 0.0,
        };
        e.activations.insert("y".into(), a.clone());
        assert!(e.check(&m).unwrap_err().contains("activation 'y': scale 0"));
        e.activations.clear();
        e.activations
            .insert("nope".into(), ActEncoding { scale: 1.0, ..a });
        assert!(e.check(&m).unwrap_err().contains("'nope' is not a tensor"));
        e.activations.clear();
        e.layers.insert(
            "ghost".into(),
            LayerOverride {
                quantize: false,
                per_channel: None,
                bits: None,
            },
        );
        assert!(e.check(&m).unwrap_err().contains("layer 'ghost'"));
    }
}
