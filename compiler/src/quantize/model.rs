//! The fp32 model as an editable protobuf, its calibration samples, and
//! running any version of it in the reference interpreter with chosen
//! tensors observed by ONNX name.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use m4c_ir::Graph;
use m4c_ops::Value;
use prost::Message;
use tract_onnx::pb::{ModelProto, TensorProto, ValueInfoProto};

use super::{QuantizeError, Result};
use crate::{LowerOptions, OnnxModel};

/// One set of model inputs, keyed by the model's input names.
pub type Sample = BTreeMap<String, Value>;

/// An fp32 ONNX model with every initializer held inline (`raw_data`), so
/// it can be edited and written as one self-contained file.
#[derive(Clone)]
pub struct FloatModel {
    /// The file it was read from (for messages).
    pub path: PathBuf,
    /// The model, initializers inline.
    pub proto: ModelProto,
}

impl FloatModel {
    /// Reads `path` (external data resolved and made inline).
    pub fn load(path: &Path) -> Result<FloatModel> {
        let m = OnnxModel::load(path)?;
        let mut proto = m.proto.clone();
        #[allow(
            clippy::expect_used,
            reason = "OnnxModel::load refuses a model without a graph"
        )]
        let graph = proto.graph.as_mut().expect("checked at load");
        for (i, t) in graph.initializer.iter_mut().enumerate() {
            let tensor = m.initializer(i)?;
            let bytes = tensor.bytes().map_err(|e| QuantizeError::Tensor {
                tensor: t.name.clone(),
                msg: e.to_string(),
            })?;
            t.raw_data = bytes.to_vec();
            t.float_data.clear();
            t.int32_data.clear();
            t.int64_data.clear();
            t.external_data.clear();
            t.data_location = None;
        }
        Ok(FloatModel {
            path: path.to_path_buf(),
            proto,
        })
    }

    /// The model's inputs (initializers listed as inputs excluded) with
    /// their declared rank, when declared.
    pub fn inputs(&self) -> Vec<(String, Option<usize>)> {
        let g = graph(&self.proto);
        let inits: std::collections::HashSet<&str> =
            g.initializer.iter().map(|t| t.name.as_str()).collect();
        g.input
            .iter()
            .filter(|i| !inits.contains(i.name.as_str()))
            .map(|i| (i.name.clone(), declared_rank(i)))
            .collect()
    }
}

/// The main graph of a model loaded through [`OnnxModel`] (which checks
/// there is one).
#[allow(
    clippy::expect_used,
    reason = "OnnxModel::load refuses a model without a graph"
)]
pub fn graph(p: &ModelProto) -> &tract_onnx::pb::GraphProto {
    p.graph.as_ref().expect("checked at load")
}

/// Declared rank of a graph input or output, when it has a tensor type
/// with a shape.
pub fn declared_rank(v: &ValueInfoProto) -> Option<usize> {
    let tract_onnx::pb::type_proto::Value::TensorType(t) = v.r#type.as_ref()?.value.as_ref()?;
    t.shape.as_ref().map(|s| s.dim.len())
}

/// The f32 values and shape of an inline initializer.
pub fn f32_values(t: &TensorProto) -> Result<(Vec<usize>, Vec<f32>)> {
    let err = |msg: &str| QuantizeError::Tensor {
        tensor: t.name.clone(),
        msg: msg.to_string(),
    };
    if t.data_type != 1 {
        return Err(err("is not a float tensor"));
    }
    let shape = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| err("has a negative dimension")))
        .collect::<Result<Vec<_>>>()?;
    let values: Vec<f32> = if t.raw_data.is_empty() {
        t.float_data.clone()
    } else {
        t.raw_data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])) // chunks_exact(4)
            .collect()
    };
    if values.len() != shape.iter().product::<usize>() {
        return Err(err("holds fewer values than its shape"));
    }
    Ok((shape, values))
}

/// Splits the calibration `.npz` files into samples: an array with the
/// input's declared rank is one sample (shared by every sample of the
/// file's stacks), one with a leading extra axis is a stack of samples
/// (all stacks of a file must agree on the count).
pub fn load_samples(files: &[PathBuf], inputs: &[(String, Option<usize>)]) -> Result<Vec<Sample>> {
    let mut samples = vec![];
    for file in files {
        let arrays = m4c_runtime::read_npz(file)?;
        let mut per_input = vec![];
        for (name, rank) in inputs {
            let v = arrays
                .get(name)
                .or_else(|| arrays.get(&m4c_runtime::sanitized_key(name)))
                .ok_or_else(|| QuantizeError::MissingInput {
                    file: file.clone(),
                    input: name.clone(),
                    keys: arrays.keys().cloned().collect::<Vec<_>>().join(", "),
                })?;
            let stacked = rank.is_some_and(|r| v.shape().len() == r + 1);
            per_input.push((name, v, stacked));
        }
        // An input given once applies to every sample of the stacks.
        let n = per_input
            .iter()
            .filter(|(_, _, stacked)| *stacked)
            .map(|(_, v, _)| v.shape()[0])
            .max()
            .unwrap_or(1);
        if let Some((name, v, _)) = per_input
            .iter()
            .find(|(_, v, stacked)| *stacked && v.shape()[0] != n)
        {
            return Err(QuantizeError::Sample {
                file: file.clone(),
                input: (*name).clone(),
                msg: format!(
                    "shape {:?} holds a different number of samples than the other inputs ({n})",
                    v.shape()
                ),
            });
        }
        for k in 0..n {
            let mut s = Sample::new();
            for (name, v, stacked) in &per_input {
                let one = if *stacked {
                    slice_first(v, k).map_err(|msg| QuantizeError::Sample {
                        file: file.clone(),
                        input: (*name).clone(),
                        msg,
                    })?
                } else {
                    (*v).clone()
                };
                s.insert((*name).clone(), one);
            }
            samples.push(s);
        }
    }
    Ok(samples)
}

/// Sample `k` of a stack (index `k` of the first axis).
fn slice_first(v: &Value, k: usize) -> std::result::Result<Value, String> {
    let t = v.to_tensor();
    if !t.dtype.size_bits().is_multiple_of(8) {
        return Err(format!("{} arrays cannot be split into samples", t.dtype));
    }
    let bytes = t.bytes().map_err(|e| e.to_string())?;
    let each = bytes.len() / t.shape[0].max(1);
    let part = m4c_ir::Tensor::from_bytes(
        t.dtype,
        &t.shape[1..],
        bytes[k * each..(k + 1) * each].to_vec(),
    );
    Value::from_tensor(&part).map_err(|e| e.to_string())
}

/// A model ready to run in the reference interpreter with extra tensors
/// observed: they are appended to the graph's outputs before lowering,
/// which maps every ONNX tensor name to the IR value computing it.
pub struct Runner {
    _file: tempfile::NamedTempFile,
    model: OnnxModel,
    names: Vec<String>,
    graphs: HashMap<Vec<Vec<usize>>, Graph>,
    what: String,
}

impl Runner {
    /// Prepares `proto` (called `what` in messages) to run with the
    /// tensors `observe` returned next to its outputs.
    pub fn new(proto: &ModelProto, observe: &[String], what: &str) -> Result<Runner> {
        let mut p = proto.clone();
        #[allow(
            clippy::expect_used,
            reason = "OnnxModel::load refuses a model without a graph"
        )]
        let g = p.graph.as_mut().expect("checked at load");
        let mut names: Vec<String> = g.output.iter().map(|o| o.name.clone()).collect();
        for name in observe {
            if !names.contains(name) {
                names.push(name.clone());
                g.output.push(ValueInfoProto {
                    name: name.clone(),
                    ..Default::default()
                });
            }
        }
        let io = |source| QuantizeError::Io {
            path: std::env::temp_dir(),
            source,
        };
        let mut file = tempfile::Builder::new()
            .prefix("m4c-quantize-")
            .suffix(".onnx")
            .tempfile()
            .map_err(io)?;
        file.write_all(&p.encode_to_vec()).map_err(io)?;
        file.flush().map_err(io)?;
        let model = OnnxModel::load(file.path())?;
        Ok(Runner {
            _file: file,
            model,
            names,
            graphs: HashMap::new(),
            what: what.to_string(),
        })
    }

    /// Runs one sample; returns every output and observed tensor by name.
    pub fn run(&mut self, sample: &Sample) -> Result<HashMap<String, Value>> {
        let shapes: Vec<Vec<usize>> = sample.values().map(|v| v.shape().to_vec()).collect();
        if !self.graphs.contains_key(&shapes) {
            let opts = LowerOptions {
                input_shapes: sample
                    .iter()
                    .map(|(k, v)| (k.clone(), v.shape().to_vec()))
                    .collect(),
                ..Default::default()
            };
            let g = crate::lower(&self.model, &opts).map_err(|e| {
                QuantizeError::Invalid(format!("{}: {}", self.what, strip_path(&e.to_string())))
            })?;
            self.graphs.insert(shapes.clone(), g);
        }
        let g = &self.graphs[&shapes];
        let inputs = g
            .inputs
            .iter()
            .map(|&id| {
                let name = &g.value(id).name;
                sample.get(name).cloned().ok_or_else(|| {
                    QuantizeError::Invalid(format!("{}: no value for input '{name}'", self.what))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let outs = m4c_ops::run_graph(g, &inputs).map_err(|source| QuantizeError::Run {
            what: self.what.clone(),
            source,
        })?;
        Ok(self.names.iter().cloned().zip(outs).collect())
    }
}

/// Lowering errors name the temporary file; the caller names the model.
fn strip_path(msg: &str) -> &str {
    msg.split_once(".onnx: ").map_or(msg, |(_, rest)| rest)
}

/// The f32 elements of every sample's value of one tensor, concatenated.
#[allow(
    clippy::expect_used,
    reason = "an f32 tensor built here always converts"
)]
pub fn concat_f32(values: &[&Value]) -> Value {
    let all: Vec<f32> = values
        .iter()
        .flat_map(|v| m4c_ops::as_f64(v).into_iter().map(|x| x as f32))
        .collect();
    let n = all.len();
    Value::from_tensor(&m4c_ir::Tensor::from_f32(&[n], &all)).expect("an f32 tensor decodes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use m4c_ir::Tensor;

    fn f32s(shape: &[usize], v: &[f32]) -> Value {
        Value::from_tensor(&Tensor::from_f32(shape, v)).unwrap()
    }

    #[test]
    fn a_stack_splits_into_samples() {
        let v = f32s(&[2, 3], &[1., 2., 3., 4., 5., 6.]);
        assert_eq!(slice_first(&v, 1).unwrap(), f32s(&[3], &[4., 5., 6.]));
        let c = concat_f32(&[&f32s(&[1], &[1.0]), &f32s(&[2], &[2.0, 3.0])]);
        assert_eq!(c, f32s(&[3], &[1.0, 2.0, 3.0]));
    }

    #[test]
    fn npz_files_become_samples() {
        let dir = tempfile::tempdir().unwrap();
        let inputs = vec![("x".to_string(), Some(1)), ("y".to_string(), Some(1))];
        // x stacks 3 samples of [2]; y (given once) is shared by all.
        let stacked = dir.path().join("s.npz");
        let arrays = [
            ("x".to_string(), f32s(&[3, 2], &[1., 2., 3., 4., 5., 6.])),
            ("y".to_string(), f32s(&[2], &[7., 8.])),
        ];
        m4c_runtime::write_npz(&stacked, &[], &arrays).unwrap();
        let s = load_samples(std::slice::from_ref(&stacked), &inputs).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[2]["x"], f32s(&[2], &[5., 6.]));
        assert_eq!(s[2]["y"], f32s(&[2], &[7., 8.]));
        // Stacks of different lengths, and a missing input, are errors.
        let bad = dir.path().join("b.npz");
        let arrays = [
            ("x".to_string(), f32s(&[3, 2], &[0.; 6])),
            ("y".to_string(), f32s(&[2, 2], &[0.; 4])),
        ];
        m4c_runtime::write_npz(&bad, &[], &arrays).unwrap();
        let e = load_samples(&[bad], &inputs).unwrap_err().to_string();
        assert!(
            e.contains("input 'y': shape [2, 2] holds a different number of samples"),
            "{e}"
        );
        let one = dir.path().join("one.npz");
        m4c_runtime::write_npz(&one, &[], &[("x".to_string(), f32s(&[2], &[0.; 2]))]).unwrap();
        let e = load_samples(&[one], &inputs).unwrap_err().to_string();
        assert!(
            e.ends_with("one.npz: no array for model input 'y' (keys: x)"),
            "{e}"
        );
    }

    #[test]
    fn lowering_messages_lose_the_temporary_path() {
        assert_eq!(
            strip_path("/tmp/m4c-quantize-x.onnx: 2 node(s)"),
            "2 node(s)"
        );
        assert_eq!(strip_path("plain"), "plain");
    }
}
