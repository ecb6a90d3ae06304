//! Adapter bundles (`.m4a`): one app's LoRA factors, bound to one firmware
//! by its content hash. The format is the bundle container of
//! `docs/BUNDLE.md` with kind `adapter`: a weights section holding the
//! factors and an `adapter` manifest entry saying where they attach.
//!
//! ```no_run
//! use m4c_runtime::adapter::AdapterBundle;
//! use m4c_runtime::bundle::Bundle;
//! let fw = Bundle::open("M4.fw".as_ref())?;
//! let app = AdapterBundle::open("app.m4a".as_ref())?;
//! let graph = app.apply(&fw, "backbone")?; // base weights stay mapped
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod lora;
mod shared;
pub mod slots;

use std::path::Path;
use std::sync::Arc;

use m4c_ir::Graph;
use memmap2::{Mmap, MmapMut};

use crate::bundle::container::{decode, too_short};
use crate::bundle::format::{AdapterManifest, BundleKind, LoraMode, Manifest, HEADER_LEN};
use crate::bundle::reader::{check_blobs, mapped_tensor, weights_range};
use crate::bundle::{Bundle, BundleError};
pub use lora::LoraFactors;
pub use shared::AdaptedModule;
pub use slots::SlottedModule;

/// Why an adapter bundle cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("{path}: {source}")]
    Bundle { path: String, source: BundleError },
    #[error("{path}: adapter manifest: {msg}")]
    Manifest { path: String, msg: String },
    #[error("{path}: built for firmware {expected}, but this firmware is {found}; rebuild it with `m4c adapt` against this firmware")]
    WrongFirmware {
        path: String,
        expected: String,
        found: String,
    },
    #[error("{path}: does not fit module `{module}`: {}", problems.join("; "))]
    Mismatch {
        path: String,
        module: String,
        problems: Vec<String>,
    },
}

/// A validated, memory-mapped adapter bundle. Its factors are slices of
/// the map; attaching them never copies the firmware's weights (keep).
pub struct AdapterBundle {
    path: String,
    info: AdapterManifest,
    factors: Vec<LoraFactors>,
    content_hash: [u8; 32],
    file_len: u64,
}

impl std::fmt::Debug for AdapterBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdapterBundle")
            .field("path", &self.path)
            .field("firmware", &self.info.firmware)
            .field("sites", &self.factors.len())
            .finish()
    }
}

impl AdapterBundle {
    /// Maps and validates the adapter bundle at `path` (container, kind,
    /// factor table). Binding to a firmware is checked by [`Self::apply`].
    pub fn open(path: &Path) -> Result<AdapterBundle, AdapterError> {
        let name = path.display().to_string();
        let wrap = |source| AdapterError::Bundle {
            path: name.clone(),
            source,
        };
        let io = |source| {
            wrap(BundleError::Io {
                path: path.to_path_buf(),
                source,
            })
        };
        let file = crate::input_file::open_regular(path).map_err(io)?;
        if file.metadata().map_err(io)?.len() < HEADER_LEN as u64 {
            let bytes = std::fs::read(path).map_err(io)?;
            return Err(wrap(too_short(&bytes)));
        }
        // SAFETY: read-only map of a file m4c never changes in place (it
        // writes bundles by renaming a new file over the old one); every
        // read goes through slices checked against the map's length.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        AdapterBundle::from_map(name, Arc::new(map))
    }

    /// Validates an adapter bundle held in memory (tests, fuzzing).
    pub fn from_bytes(bytes: &[u8]) -> Result<AdapterBundle, AdapterError> {
        let name = "<memory>".to_string();
        let wrap = |source| AdapterError::Bundle {
            path: name.clone(),
            source,
        };
        if bytes.len() < HEADER_LEN {
            return Err(wrap(too_short(bytes)));
        }
        let io = |source| {
            wrap(BundleError::Io {
                path: "<anonymous map>".into(),
                source,
            })
        };
        let mut map = MmapMut::map_anon(bytes.len()).map_err(io)?;
        map.copy_from_slice(bytes);
        AdapterBundle::from_map(name.clone(), Arc::new(map.make_read_only().map_err(io)?))
    }

    fn from_map(path: String, map: Arc<Mmap>) -> Result<AdapterBundle, AdapterError> {
        let wrap = |source| AdapterError::Bundle {
            path: path.clone(),
            source,
        };
        let decoded = decode(&map).map_err(wrap)?;
        let manifest: Manifest = decoded.manifest;
        let bad = |msg: String| AdapterError::Manifest {
            path: path.clone(),
            msg,
        };
        let info = match (&manifest.kind, &manifest.adapter) {
            (BundleKind::Adapter, Some(info)) => info.clone(),
            (BundleKind::Adapter, None) => return Err(bad("missing `adapter` entry".into())),
            (found, _) => {
                return Err(wrap(BundleError::Kind {
                    found: *found,
                    expected: BundleKind::Adapter,
                }))
            }
        };
        if !manifest.modules.is_empty() {
            return Err(bad("an adapter bundle holds no modules".into()));
        }
        if manifest.sections.len() != 1 {
            return Err(bad(format!(
                "expected exactly one section (weights), found {}",
                manifest.sections.len()
            )));
        }
        let is_hex =
            |s: &str| s.len() == 64 && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
        if !is_hex(&info.firmware) {
            return Err(bad("`firmware` must be 64 lowercase hex digits".into()));
        }
        if info.sites.is_empty() {
            return Err(bad("no sites".into()));
        }
        let (weights_at, weights_len) = weights_range(&manifest).map_err(wrap)?;
        check_blobs(&manifest, weights_len).map_err(wrap)?;
        let mut factors = Vec::with_capacity(info.sites.len());
        for s in &info.sites {
            let tensor = |w, which| {
                mapped_tensor(&map, &manifest, weights_at, w)
                    .map_err(|e| bad(format!("site {} {which}: {e}", s.target)))
            };
            if !s.scale.is_finite() {
                return Err(bad(format!(
                    "site {}: scale {} is not finite",
                    s.target, s.scale
                )));
            }
            factors.push(LoraFactors {
                target: s.target.clone(),
                a: tensor(&s.a, "lora_A")?,
                b: tensor(&s.b, "lora_B")?,
                scale: s.scale,
            });
        }
        Ok(AdapterBundle {
            path,
            info,
            factors,
            content_hash: decoded.content_hash,
            file_len: map.len() as u64,
        })
    }

    /// The adapter's manifest entry (binding, mode, sites).
    pub fn info(&self) -> &AdapterManifest {
        &self.info
    }

    /// The factors, as slices of the adapter file.
    pub fn factors(&self) -> &[LoraFactors] {
        &self.factors
    }

    /// How the branches run once attached.
    pub fn mode(&self) -> LoraMode {
        self.info.lora
    }

    /// The adapter file's own content hash (hex).
    pub fn content_hash_hex(&self) -> String {
        hex(&self.content_hash)
    }

    /// Size of the file in bytes.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Refuses a firmware other than the one this adapter was built for.
    pub fn check_binding(&self, fw: &Bundle) -> Result<(), AdapterError> {
        let found = fw.content_hash_hex();
        if found == self.info.firmware {
            Ok(())
        } else {
            Err(AdapterError::WrongFirmware {
                path: self.path.clone(),
                expected: self.info.firmware.clone(),
                found,
            })
        }
    }

    /// `module` of `fw` with this adapter attached; see [`adapted_module`].
    pub fn apply(&self, fw: &Bundle, module: &str) -> Result<Graph, AdapterError> {
        adapted_module(fw, module, &[self])
    }
}

/// `module` of `fw` with `adapters` attached in order (none: the module
/// itself), as one graph. Each adapter must be bound to `fw`. The
/// firmware's weights stay slices of its one map (keep) or the adapted ones
/// become private copies (fold). Executors hold an [`AdaptedModule`]
/// instead, which shares the base graph between adapters.
pub fn adapted_module(
    fw: &Bundle,
    module: &str,
    adapters: &[&AdapterBundle],
) -> Result<Graph, AdapterError> {
    let base = Arc::new(firmware_module(fw, module)?);
    shared_module(fw, module, base, adapters)?
        .graph()
        .map(std::borrow::Cow::into_owned)
}

/// `module`'s base graph from `fw`.
pub fn firmware_module(fw: &Bundle, module: &str) -> Result<Graph, AdapterError> {
    fw.module(module).map_err(|source| AdapterError::Bundle {
        path: "firmware".into(),
        source,
    })
}

/// `base` (module `module` of `fw`) with `adapters` attached in order,
/// each checked to be bound to `fw`; see [`AdaptedModule::new`].
pub fn shared_module(
    fw: &Bundle,
    module: &str,
    base: Arc<Graph>,
    adapters: &[&AdapterBundle],
) -> Result<AdaptedModule, AdapterError> {
    for a in adapters {
        a.check_binding(fw)?;
    }
    AdaptedModule::new(module, base, adapters)
}

/// Lowercase hex of a hash.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
