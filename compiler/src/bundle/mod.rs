//! Writing bundles (format: `docs/BUNDLE.md`, definitions shared with the
//! reader in `m4c_runtime::bundle`).
//!
//! A firmware bundle holds the shared modules of a device, each lowered
//! once from ONNX; identical weights are stored once across modules.
//!
//! ```no_run
//! use m4c_compiler::bundle::{build_firmware, write_atomically, FirmwareOptions};
//! let modules = vec![("txt_enc".to_string(), "clip_text.onnx".into())];
//! let bytes = build_firmware(&modules, &FirmwareOptions::default())?;
//! write_atomically("M4.fw".as_ref(), &[], &bytes)?;
//! # Ok::<(), m4c_compiler::bundle::BuildError>(())
//! ```

mod adapter;
mod error;
mod pack;
mod pool;
mod write;

use std::collections::BTreeMap;
use std::path::PathBuf;

use m4c_ir::Graph;
use m4c_runtime::bundle::container::{lay_out, SectionData};
use m4c_runtime::bundle::format::{
    is_valid_name, BundleKind, CodeEntry, Manifest, ModuleEntry, SectionKind, REFERENCE_BACKEND,
};
use m4c_runtime::bundle::lean::CPU_BACKEND;
use m4c_runtime::bundle::sign::{trailer, SecretKey};

pub use adapter::build_adapter;
pub use error::BuildError;
pub use write::write_atomically;

use crate::backend::Artifact;
use crate::{lower_report, FrontendError, LowerOptions, OnnxModel};

/// How to build a firmware bundle.
#[derive(Clone, Debug, Default)]
pub struct FirmwareOptions {
    /// Binding of symbolic dimensions, applied to every module.
    pub lower: LowerOptions,
}

/// A module ready to be packed: its graph, where it came from, and the
/// code a backend compiled from that graph.
pub struct ModuleSource {
    pub name: String,
    pub graph: Graph,
    /// The symbolic dimensions and the values they were bound to.
    pub dims: BTreeMap<String, usize>,
    /// BLAKE3 (hex) of the model file.
    pub source_blake3: String,
    /// The artifacts a code generator compiled from `graph`, one per
    /// target of the bundle's backend (empty for the reference backend);
    /// their files with a section kind become the module's code sections.
    pub code: Vec<Artifact>,
}

/// Lowers each `(name, model.onnx)` and packs them into a firmware bundle's
/// bytes for the reference backend (compiled backends need a code
/// generator: [`lower_modules`], compile, [`assemble`]). The same models
/// and options always give the same bytes.
pub fn build_firmware(
    modules: &[(String, PathBuf)],
    opts: &FirmwareOptions,
) -> Result<Vec<u8>, BuildError> {
    assemble(lower_modules(modules, &opts.lower)?, REFERENCE_BACKEND)
}

/// Lowers each `(name, model.onnx)` once, binding symbolic dimensions with
/// `lower`.
pub fn lower_modules(
    modules: &[(String, PathBuf)],
    lower: &LowerOptions,
) -> Result<Vec<ModuleSource>, BuildError> {
    let mut sources = vec![];
    for (name, path) in modules {
        check_name(name)?;
        let frontend = |source| BuildError::Frontend {
            module: name.clone(),
            source,
        };
        let model = OnnxModel::load(path).map_err(frontend)?;
        let report = lower_report(&model, lower).map_err(frontend)?;
        let graph = report.graph.ok_or_else(|| {
            frontend(FrontendError::Unsupported {
                path: path.clone(),
                nodes: report.unsupported,
            })
        })?;
        // The model (as large as the graph's weights) goes before the file
        // is hashed, and the file is hashed as it is read, not held.
        drop(model);
        let io = |source| BuildError::Io {
            path: path.clone(),
            source,
        };
        let source_blake3 = file_hash_hex(path).map_err(io)?;
        sources.push(ModuleSource {
            name: name.clone(),
            graph,
            dims: report.dims,
            source_blake3,
            code: vec![],
        });
    }
    Ok(sources)
}

/// The BLAKE3 (hex) a firmware records for the model file at `path`
/// ([`ModuleSource::source_blake3`]), hashed as it is read (a model file
/// is not held in memory for its hash).
pub fn file_hash_hex(path: &std::path::Path) -> std::io::Result<String> {
    let file = std::fs::File::open(path)?;
    let hash = blake3::Hasher::new().update_reader(file)?.finalize();
    Ok(hash.to_hex().to_string())
}

fn check_name(name: &str) -> Result<(), BuildError> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(BuildError::InvalidName(name.to_string()))
    }
}

/// Packs already-lowered modules into a firmware bundle's bytes
/// ([`prepare`], then [`Assembled::write`] into memory).
#[allow(clippy::expect_used, reason = "writing to a Vec cannot fail")]
pub fn assemble(modules: Vec<ModuleSource>, backend: &str) -> Result<Vec<u8>, BuildError> {
    let mut bytes = vec![];
    prepare(modules, backend)?
        .write(&mut bytes, None)
        .expect("in memory");
    Ok(bytes)
}

/// A firmware bundle's parts, ready to be written: the manifest and the
/// bytes of every section (weights, IR texts, the modules' code), each
/// held once. [`Assembled::write`] streams them to a file, so that a
/// build never holds the bundle a second time.
pub struct Assembled {
    manifest: Manifest,
    weights: Vec<u8>,
    /// Each module's name and IR text.
    texts: Vec<(String, String)>,
    /// Each module's name and code.
    codes: Vec<(String, Vec<Artifact>)>,
}

impl Assembled {
    /// The sections in file order: the weights section, one IR section
    /// per module, then each module's code sections (each artifact file
    /// with a section kind, named `<module>.<target>`).
    fn sections(&self) -> Vec<SectionData<'_>> {
        let mut sections = vec![SectionData {
            kind: SectionKind::Weights,
            name: "weights".into(),
            bytes: &self.weights,
        }];
        sections.extend(self.texts.iter().map(|(name, t)| SectionData {
            kind: SectionKind::Ir,
            name: name.clone(),
            bytes: t.as_bytes(),
        }));
        for (module, code) in &self.codes {
            for c in code {
                let name = code_section(module, &c.target);
                for file in &c.files {
                    if let Some(kind) = file.section {
                        sections.push(SectionData {
                            kind,
                            name: name.clone(),
                            bytes: &file.bytes,
                        });
                    }
                }
            }
        }
        sections
    }

    /// Writes the bundle to `w`, followed by `key`'s signature trailer
    /// when given; returns the bytes written. The same parts always give
    /// the same bytes.
    pub fn write(
        &self,
        w: &mut impl std::io::Write,
        key: Option<&SecretKey>,
    ) -> std::io::Result<u64> {
        let sections = self.sections();
        let layout = lay_out(self.manifest.clone(), &sections);
        layout.write(&sections, w)?;
        let mut len = layout.file_len();
        if let Some(key) = key {
            let t = trailer(&layout.content_hash(), key);
            w.write_all(&t)?;
            len += t.len() as u64;
        }
        Ok(len)
    }
}

/// Packs already-lowered modules into a firmware bundle's parts: modules
/// sorted by name, weights deduplicated by content. For a compiled
/// `backend` every module must carry code of that backend; for the
/// reference backend none may.
pub fn prepare(mut modules: Vec<ModuleSource>, backend: &str) -> Result<Assembled, BuildError> {
    if modules.is_empty() {
        return Err(BuildError::NoModules);
    }
    modules.sort_by(|a, b| a.name.cmp(&b.name));
    for w in modules.windows(2) {
        if w[0].name == w[1].name {
            return Err(BuildError::DuplicateModule(w[0].name.clone()));
        }
    }
    let mut pool = pool::WeightPool::default();
    let mut entries = vec![];
    let mut texts = vec![];
    for m in &modules {
        check_name(&m.name)?;
        let code_error = |msg: &str| BuildError::Pack {
            module: m.name.clone(),
            msg: format!("backend {backend}: {msg}"),
        };
        match (backend == REFERENCE_BACKEND, m.code.is_empty()) {
            (false, true) => return Err(code_error("no compiled code")),
            (true, false) => return Err(code_error("compiled code given")),
            _ => {}
        }
        if let Some(a) = m.code.iter().find(|a| a.backend != backend) {
            return Err(code_error(&format!("code of backend {} given", a.backend)));
        }
        let packed = pack::pack(&m.graph, &mut pool, cpu_code(m, backend)).map_err(|msg| {
            BuildError::Pack {
                module: m.name.clone(),
                msg,
            }
        })?;
        entries.push(ModuleEntry {
            dims: m.dims.clone(),
            ir_section: m.name.clone(),
            name: m.name.clone(),
            source_blake3: m.source_blake3.clone(),
            backend: backend.to_string(),
            code: m
                .code
                .iter()
                .map(|c| CodeEntry {
                    cpu: c.tuning.clone(),
                    section: code_section(&m.name, &c.target),
                    target: c.target.clone(),
                })
                .collect(),
            weights: packed.weights,
            code_weights: packed.code_weights,
        });
        texts.push((m.name.clone(), packed.text));
    }
    // The graphs (as large as the models) are printed and packed: only the
    // code is still needed.
    let codes = modules.into_iter().map(|m| (m.name, m.code)).collect();
    let (weights, blobs) = pool.finish();
    Ok(Assembled {
        manifest: Manifest {
            adapter: None,
            blobs,
            kind: BundleKind::Firmware,
            modules: entries,
            sections: vec![],
        },
        weights,
        texts,
        codes,
    })
}

/// The first of a module's CPU code artifacts with a plan and weights:
/// the code whose weights the module's IR weights are read from where
/// it stores them (`docs/BUNDLE.md`, lean bundles).
fn cpu_code<'a>(m: &'a ModuleSource, backend: &str) -> Option<pack::CpuCode<'a>> {
    if backend != CPU_BACKEND {
        return None;
    }
    m.code.iter().find_map(|c| {
        let file = |kind| c.files.iter().find(|f| f.section == Some(kind));
        let (plan, weights) = (
            file(SectionKind::CodePlan)?,
            file(SectionKind::CodeWeights)?,
        );
        Some(pack::CpuCode {
            section: code_section(&m.name, &c.target),
            plan: &plan.bytes,
            weights: &weights.bytes,
        })
    })
}

/// The name of a module's code sections for one target.
fn code_section(module: &str, target: &str) -> String {
    format!("{module}.{target}")
}
