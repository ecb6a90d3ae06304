//! Reading a PEFT LoRA adapter directory: `adapter_config.json` and
//! `adapter_model.safetensors` (tensors `base_model.model.<module>.lora_A.weight`
//! `[r, in]` and `.lora_B.weight` `[out, r]`). The safetensors file is
//! memory-mapped and its tensors referenced in place, like ONNX weights.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use m4c_ir::{DType, Storage, Tensor};
use serde_json::Value as Json;

use super::AdapterError;

/// One module's factors as stored by PEFT.
#[derive(Clone, Debug)]
pub struct ModuleFactors {
    /// `[r, in]`.
    pub a: Tensor,
    /// `[out, r]`.
    pub b: Tensor,
    pub scale: f64,
}

/// A loaded PEFT LoRA adapter.
#[derive(Clone, Debug)]
pub struct PeftAdapter {
    /// Directory name, used to name the attached values.
    pub name: String,
    pub path: String,
    /// `target_modules` (names or one regex, kept verbatim).
    pub target_modules: Vec<String>,
    /// Module path (without `base_model.model.`) → factors.
    pub modules: BTreeMap<String, ModuleFactors>,
}

const PREFIX: &str = "base_model.model.";

/// The last pattern key of a `rank_pattern`/`alpha_pattern` map that
/// matches `module` (PEFT matches `(.*\.)?key$`; keys here are plain
/// module-path suffixes).
fn pattern<'a>(map: Option<&'a Json>, module: &str) -> Option<&'a Json> {
    let map = map?.as_object()?;
    map.iter()
        .filter(|(k, _)| super::scope_ends_with(module, k))
        .map(|(_, v)| v)
        .next_back()
}

impl PeftAdapter {
    /// Loads `dir`.
    pub fn load(dir: &Path) -> Result<PeftAdapter, AdapterError> {
        let path = dir.display().to_string();
        let io = |p: &Path, e: std::io::Error| AdapterError::Io {
            path: p.display().to_string(),
            reason: e.to_string(),
        };
        let cfg_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| io(&cfg_path, e))?;
        let cfg_err = |reason: String| AdapterError::Config {
            path: cfg_path.display().to_string(),
            reason,
        };
        let cfg: Json = serde_json::from_str(&text).map_err(|e| cfg_err(e.to_string()))?;
        let unsupported = |reason: String| AdapterError::Unsupported {
            path: path.clone(),
            reason,
        };
        if let Some(t) = cfg.get("peft_type").and_then(Json::as_str) {
            if t != "LORA" {
                return Err(unsupported(format!("peft_type {t} (only LORA)")));
            }
        }
        if cfg.get("use_dora").and_then(Json::as_bool) == Some(true) {
            return Err(unsupported("use_dora (DoRA is not LoRA)".into()));
        }
        if let Some(b) = cfg.get("bias").and_then(Json::as_str) {
            if b != "none" {
                return Err(unsupported(format!("bias={b} (only none)")));
            }
        }
        let r = cfg
            .get("r")
            .and_then(Json::as_u64)
            .ok_or_else(|| cfg_err("missing integer `r`".into()))? as usize;
        let alpha = cfg
            .get("lora_alpha")
            .and_then(Json::as_f64)
            .ok_or_else(|| cfg_err("missing number `lora_alpha`".into()))?;
        let rslora = cfg
            .get("use_rslora")
            .and_then(Json::as_bool)
            .unwrap_or(false);
        let target_modules = match cfg.get("target_modules") {
            Some(Json::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect(),
            Some(Json::String(s)) => vec![s.clone()],
            _ => return Err(cfg_err("missing `target_modules`".into())),
        };

        let st_path = dir.join("adapter_model.safetensors");
        let file = std::fs::File::open(&st_path).map_err(|e| io(&st_path, e))?;
        // SAFETY: the adapter file is opened read-only and treated as
        // immutable input for the compiler's lifetime, as ONNX weights are.
        let map = Arc::new(unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io(&st_path, e))?);
        let st_err = |reason: String| AdapterError::Tensors {
            path: st_path.display().to_string(),
            reason,
        };
        safetensors::SafeTensors::deserialize(&map).map_err(|e| st_err(e.to_string()))?;
        let (header, meta) =
            safetensors::SafeTensors::read_metadata(&map).map_err(|e| st_err(e.to_string()))?;
        let data_start = 8 + header;
        let mut a_b: BTreeMap<String, [Option<Tensor>; 2]> = BTreeMap::new();
        for (name, info) in meta.tensors() {
            let dtype = match info.dtype {
                safetensors::Dtype::F32 => DType::F32,
                safetensors::Dtype::F16 => DType::F16,
                safetensors::Dtype::BF16 => DType::BF16,
                d => {
                    return Err(st_err(format!(
                        "tensor {name}: dtype {d:?} (f32/f16/bf16 only)"
                    )))
                }
            };
            let module = name.strip_prefix(PREFIX).unwrap_or(&name);
            let (module, slot) = if let Some(m) = module.strip_suffix(".lora_A.weight") {
                (m, 0)
            } else if let Some(m) = module.strip_suffix(".lora_B.weight") {
                (m, 1)
            } else {
                return Err(st_err(format!(
                    "tensor {name} is not a lora_A/lora_B weight"
                )));
            };
            let (start, end) = info.data_offsets;
            let t = Tensor {
                dtype,
                shape: info.shape.clone(),
                storage: Storage::Mapped {
                    map: map.clone(),
                    offset: data_start + start,
                    len: end - start,
                    file: true,
                },
            };
            a_b.entry(module.to_string()).or_default()[slot] = Some(t);
        }
        let mut modules = BTreeMap::new();
        let mut problems = vec![];
        for (module, [a, b]) in a_b {
            let (Some(a), Some(b)) = (a, b) else {
                problems.push(format!("{module}: lora_A or lora_B missing"));
                continue;
            };
            let leaf = module.rsplit('.').next().unwrap_or(&module);
            let targeted = target_modules.len() == 1
                && !target_modules[0]
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '_')
                || target_modules
                    .iter()
                    .any(|t| t == leaf || super::scope_ends_with(&module, t));
            if !targeted {
                problems.push(format!(
                    "{module}: not in target_modules {target_modules:?}"
                ));
            }
            let rank = pattern(cfg.get("rank_pattern"), &module)
                .and_then(Json::as_u64)
                .map_or(r, |v| v as usize);
            let alpha = pattern(cfg.get("alpha_pattern"), &module)
                .and_then(Json::as_f64)
                .unwrap_or(alpha);
            if a.shape.len() != 2 || b.shape.len() != 2 || a.shape[0] != rank || b.shape[1] != rank
            {
                problems.push(format!(
                    "{module}: lora_A {:?} / lora_B {:?} do not have rank {rank}",
                    a.shape, b.shape
                ));
                continue;
            }
            let scale = if rslora {
                alpha / (rank as f64).sqrt()
            } else {
                alpha / rank as f64
            };
            modules.insert(module, ModuleFactors { a, b, scale });
        }
        if !problems.is_empty() {
            return Err(AdapterError::Mismatch {
                adapter: path,
                problems,
            });
        }
        let name = dir.file_name().map_or_else(
            || "adapter".to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        Ok(PeftAdapter {
            name,
            path,
            target_modules,
            modules,
        })
    }
}
