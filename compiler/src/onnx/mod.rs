//! Reading ONNX files: the protobuf (parsed by tract-onnx's prost types),
//! opset imports, and initializers referenced in place (memory maps of the
//! model file and of its external-data files).

mod tensor;
mod wire;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use m4c_ir::{Storage, Tensor};
use m4c_runtime::input_file::{open_regular, read_regular, resolve_inside};
use memmap2::Mmap;
use prost::Message;
use tract_onnx::pb::{ModelProto, TensorProto};

pub use tensor::{dtype_from_onnx, onnx_type_name};
pub use tract_onnx::pb;

use crate::FrontendError;

/// Opset versions of the default domain the frontend accepts.
pub const SUPPORTED_OPSETS: std::ops::RangeInclusive<i64> = 7..=28;

/// A parsed ONNX model whose weights stay in their files.
pub struct OnnxModel {
    pub path: PathBuf,
    pub proto: ModelProto,
    map: Arc<Mmap>,
    spans: Vec<Option<wire::RawSpan>>,
    external: Mutex<HashMap<PathBuf, Arc<Mmap>>>,
}

fn map_file(path: &Path) -> Result<Mmap, std::io::Error> {
    let file = open_regular(path)?;
    // SAFETY: the file is opened read-only and the map is only read; like
    // every mmap-based loader we rely on nobody truncating the model file
    // while the compiler runs.
    unsafe { Mmap::map(&file) }
}

impl OnnxModel {
    /// Memory-maps and parses `path`.
    pub fn load(path: &Path) -> Result<OnnxModel, FrontendError> {
        let path = path.to_path_buf();
        let map = map_file(&path).map_err(|source| FrontendError::Io {
            path: path.clone(),
            source,
        })?;
        let (proto, spans) = wire::decode_model(&map).map_err(|msg| FrontendError::Protobuf {
            path: path.clone(),
            msg,
        })?;
        if proto.graph.is_none() {
            return Err(FrontendError::NoGraph { path });
        }
        let model = OnnxModel {
            path,
            proto,
            map: Arc::new(map),
            spans,
            external: Mutex::new(HashMap::new()),
        };
        model.check_opsets()?;
        Ok(model)
    }

    fn check_opsets(&self) -> Result<(), FrontendError> {
        let v = self.opset("");
        match v {
            Some(v) if SUPPORTED_OPSETS.contains(&v) => Ok(()),
            Some(v) => Err(FrontendError::Opset {
                path: self.path.clone(),
                msg: format!(
                    "opset {v} of the default domain is not supported (supported: {}–{})",
                    SUPPORTED_OPSETS.start(),
                    SUPPORTED_OPSETS.end()
                ),
            }),
            None => Err(FrontendError::Opset {
                path: self.path.clone(),
                msg: "model imports no opset of the default domain".into(),
            }),
        }
    }

    /// The imported opset version of a domain (`""` and `"ai.onnx"` are the
    /// default domain).
    pub fn opset(&self, domain: &str) -> Option<i64> {
        let is_default = |d: &str| d.is_empty() || d == "ai.onnx";
        self.proto
            .opset_import
            .iter()
            .find(|o| o.domain == domain || (is_default(domain) && is_default(&o.domain)))
            .map(|o| o.version)
    }

    /// The main graph.
    #[allow(
        clippy::expect_used,
        reason = "OnnxModel::load refuses a model without a graph"
    )]
    pub fn graph(&self) -> &tract_onnx::pb::GraphProto {
        self.proto.graph.as_ref().expect("checked at load")
    }

    /// The i-th initializer of the main graph, referenced in place.
    pub fn initializer(&self, i: usize) -> Result<Tensor, FrontendError> {
        let t = &self.graph().initializer[i];
        let raw = self.spans[i].map(|s| Storage::Mapped {
            map: self.map.clone(),
            offset: s.offset,
            len: s.len,
            file: true,
        });
        self.tensor_with(t, raw)
    }

    /// Decodes any tensor proto of this model (initializers of subgraphs,
    /// `Constant` attributes), resolving external data.
    pub fn tensor(&self, t: &TensorProto) -> Result<Tensor, FrontendError> {
        self.tensor_with(t, None)
    }

    fn tensor_with(&self, t: &TensorProto, raw: Option<Storage>) -> Result<Tensor, FrontendError> {
        let err = |msg: String| FrontendError::Tensor {
            path: self.path.clone(),
            tensor: t.name.clone(),
            msg,
        };
        let raw = match raw {
            Some(r) => Some(r),
            None if t.data_location == Some(1) => Some(self.external(t).map_err(err)?),
            None => None,
        };
        tensor::decode(t, raw).map_err(err)
    }

    fn external(&self, t: &TensorProto) -> Result<Storage, String> {
        let kv: HashMap<&str, &str> = t
            .external_data
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
            .collect();
        let location = kv
            .get("location")
            .ok_or("external data without a location")?;
        let rel = Path::new(location);
        if rel.is_absolute() {
            return Err(format!(
                "external data location '{location}' is absolute (it must be inside the model's folder)"
            ));
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let file = resolve_inside(dir, rel)
            .map_err(|e| format!("external data file '{location}': {e}"))?;
        let num = |k: &str| {
            kv.get(k)
                .map(|v| {
                    v.parse::<usize>()
                        .map_err(|_| format!("bad external data {k} '{v}'"))
                })
                .transpose()
        };
        let offset = num("offset")?.unwrap_or(0);
        let mut maps = self
            .external
            .lock()
            .map_err(|_| "external data cache poisoned")?;
        let map = match maps.get(&file) {
            Some(m) => m.clone(),
            None => {
                let m = Arc::new(
                    map_file(&file).map_err(|e| format!("external data file '{location}': {e}"))?,
                );
                maps.insert(file.clone(), m.clone());
                m
            }
        };
        let dtype = dtype_from_onnx(t.data_type)?;
        let n = tensor::elements(&tensor::dims(t)?)?;
        let len = num("length")?.unwrap_or(dtype.storage_bytes(n));
        if offset.checked_add(len).is_none_or(|end| end > map.len()) {
            return Err(format!(
                "external data '{location}' has {} bytes, tensor needs {len} at offset {offset}",
                map.len()
            ));
        }
        Ok(Storage::Mapped {
            map,
            offset,
            len,
            file: true,
        })
    }
}

/// Reads a serialised `TensorProto` file (ONNX test-data `.pb` files).
pub fn load_tensor_file(path: &Path) -> Result<(String, Tensor), FrontendError> {
    let bytes = read_regular(path, u64::MAX).map_err(|source| FrontendError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let t = TensorProto::decode(bytes.as_slice()).map_err(|e| FrontendError::Protobuf {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    let tensor = tensor::decode(&t, None).map_err(|msg| FrontendError::Tensor {
        path: path.to_path_buf(),
        tensor: t.name.clone(),
        msg,
    })?;
    Ok((t.name, tensor))
}
