//! [`Bundle`]: a validated, memory-mapped bundle whose modules are IR
//! graphs with their weights pointing into the map.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use m4c_ir::{DType, Graph, Storage, Tensor};
use memmap2::{Mmap, MmapMut};

use super::code::{load_code, ModuleCode};
use super::container::{decode, too_short};
use super::format::{
    is_valid_name, BundleKind, Manifest, ModuleEntry, SectionEntry, SectionKind, WeightEntry,
    ALIGN, HEADER_LEN,
};
use super::lean::{materialize, resolve, PackedConstant, Resolved};
use super::sign::PublicKey;
use super::BundleError;

/// A bundle opened for execution.
///
/// Opening checks the whole file (see [`super::container::decode`]) and
/// then every module: its IR parses and verifies, and its weight table
/// matches the IR's constants. Afterwards [`Bundle::module`] cannot fail
/// for a listed module. Weights are not copied: each module's weight
/// constants are [`Storage::Mapped`] slices of the one map (of the weights
/// section or of the code's), shared by every graph handed out; only
/// weights the bundle stores once, as the CPU code's packed GEMM panels,
/// are unpacked, once per module, when [`Bundle::module`] is first asked
/// for it (the interpreter), never for [`Bundle::module_interface`]
/// (compiled code).
pub struct Bundle {
    map: Arc<Mmap>,
    manifest: Manifest,
    path: PathBuf,
    content_hash: [u8; 32],
    signer: Option<PublicKey>,
    /// Every module's graph, its packed constants absent.
    graphs: BTreeMap<String, Graph>,
    /// Per module, the constants to unpack and, once done, the whole graph.
    packed: BTreeMap<String, (Vec<PackedConstant>, OnceLock<Graph>)>,
    code: BTreeMap<String, Vec<ModuleCode>>,
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field("content_hash", &self.content_hash_hex())
            .field("modules", &self.graphs.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Bundle {
    /// Maps and validates the bundle at `path`; every error names it.
    pub fn open(path: &Path) -> Result<Bundle, BundleError> {
        let mut b = Self::open_unnamed(path).map_err(|e| e.at(path))?;
        b.path = path.to_path_buf();
        Ok(b)
    }

    fn open_unnamed(path: &Path) -> Result<Bundle, BundleError> {
        let io = |source| BundleError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = crate::input_file::open_regular(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len < HEADER_LEN as u64 {
            // Too short to map usefully; read it to report magic or truncation.
            let bytes = std::fs::read(path).map_err(io)?;
            return Err(too_short(&bytes));
        }
        // SAFETY: the map is read-only and its bytes are only ever read
        // through slices checked against its length. Bundles are immutable
        // once written (m4c replaces a bundle by renaming a new file over
        // it, which leaves this inode untouched); a process that truncates
        // or rewrites the file in place while it is mapped is outside what
        // any memory-mapped reader can defend against.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Bundle::from_map(Arc::new(map))
    }

    /// Validates a bundle held in memory (tests, fuzzing, bundles received
    /// over a channel). The bytes are copied once into an anonymous map so
    /// that weights can be mapped slices as with [`Bundle::open`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Bundle, BundleError> {
        if bytes.len() < HEADER_LEN {
            return Err(too_short(bytes));
        }
        let io = |source| BundleError::Io {
            path: "<anonymous map>".into(),
            source,
        };
        let mut map = MmapMut::map_anon(bytes.len()).map_err(io)?;
        map.copy_from_slice(bytes);
        Bundle::from_map(Arc::new(map.make_read_only().map_err(io)?))
    }

    fn from_map(map: Arc<Mmap>) -> Result<Bundle, BundleError> {
        let decoded = decode(&map)?;
        let manifest = decoded.manifest;
        if manifest.kind != BundleKind::Firmware || manifest.adapter.is_some() {
            return Err(BundleError::Kind {
                found: manifest.kind,
                expected: BundleKind::Firmware,
            });
        }
        let (graphs, packed) = load_modules(&map, &manifest)?;
        let code = load_code(&map, &manifest, &graphs)?;
        Ok(Bundle {
            map,
            manifest,
            path: PathBuf::from("<memory>"),
            content_hash: decoded.content_hash,
            signer: decoded.signer,
            graphs,
            packed,
            code,
        })
    }

    /// Where the bundle was opened from (`<memory>` for
    /// [`Bundle::from_bytes`]), for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The module names, sorted.
    pub fn modules(&self) -> impl Iterator<Item = &str> {
        self.graphs.keys().map(String::as_str)
    }

    /// The manifest (targets, bound dims, weight tables, sections).
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// A module's graph with every weight, as the interpreter runs it; its
    /// weights are slices of the bundle's map, except those stored only as
    /// the code's packed GEMM panels, unpacked (copied) on the first call
    /// for the module and shared by later ones. Otherwise cheap: the graph
    /// was built and checked when the bundle was opened.
    pub fn module(&self, name: &str) -> Result<Graph, BundleError> {
        let graph = self.module_interface(name)?;
        let Some((packed, full)) = self.packed.get(name) else {
            return Ok(graph);
        };
        if let Some(g) = full.get() {
            return Ok(g.clone());
        }
        let g = materialize(&graph, &self.map, packed)
            .map_err(|e| BundleError::module(name, e).at(&self.path))?;
        Ok(full.get_or_init(|| g).clone())
    }

    /// A module's graph for what needs its interface and structure but
    /// not all of its weights (signatures, compiled code): constants that
    /// the bundle stores only as the code's packed panels are
    /// [`Storage::Absent`]. Never copies a weight.
    pub fn module_interface(&self, name: &str) -> Result<Graph, BundleError> {
        self.graphs.get(name).cloned().ok_or_else(|| {
            BundleError::UnknownModule {
                name: name.to_string(),
                known: self.graphs.keys().cloned().collect::<Vec<_>>().join(", "),
            }
            .at(&self.path)
        })
    }

    /// A module's compiled code, one entry per target (empty for modules
    /// built for the reference interpreter or unknown names). Checked
    /// against the module's IR when the bundle was opened.
    pub fn code(&self, name: &str) -> &[ModuleCode] {
        self.code.get(name).map(Vec::as_slice).unwrap_or_default()
    }

    /// The key that signed the bundle (its signature verified when the
    /// bundle was opened), `None` for an unsigned bundle.
    pub fn signer(&self) -> Option<&PublicKey> {
        self.signer.as_ref()
    }

    /// The content hash of the whole bundle (BLAKE3, see `docs/BUNDLE.md`):
    /// what adapters bind to.
    pub fn content_hash(&self) -> [u8; 32] {
        self.content_hash
    }

    /// [`Bundle::content_hash`] as 64 lowercase hex digits.
    pub fn content_hash_hex(&self) -> String {
        self.content_hash
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// The checked byte range of the single weights section.
pub(crate) fn weights_range(manifest: &Manifest) -> Result<(usize, usize), BundleError> {
    let mut it = manifest
        .sections
        .iter()
        .filter(|s| s.kind == SectionKind::Weights);
    match (it.next(), it.next()) {
        (Some(s), None) if s.name == "weights" => Ok((s.offset as usize, s.len as usize)),
        (Some(s), None) => Err(BundleError::Manifest(format!(
            "the weights section is named `{}`, expected `weights`",
            s.name
        ))),
        (None, _) => Err(BundleError::Manifest("no weights section".into())),
        (Some(_), Some(_)) => Err(BundleError::Manifest(
            "more than one weights section".into(),
        )),
    }
}

/// Checks the blob table against the weights section: each blob aligned,
/// inside the section, none overlapping another.
pub(crate) fn check_blobs(manifest: &Manifest, section_len: usize) -> Result<(), BundleError> {
    let mut ranges = vec![];
    for (i, b) in manifest.blobs.iter().enumerate() {
        let end = b
            .offset
            .checked_add(b.len)
            .filter(|&e| e <= section_len as u64);
        let Some(end) = end else {
            return Err(BundleError::Layout(format!(
                "blob {i} (offset {}, {} bytes) extends past the weights section ({section_len} bytes)",
                b.offset, b.len
            )));
        };
        if b.offset % ALIGN as u64 != 0 {
            return Err(BundleError::Layout(format!(
                "blob {i}: offset {} is not a multiple of {ALIGN}",
                b.offset
            )));
        }
        ranges.push((b.offset, end, i));
    }
    ranges.sort_unstable();
    for w in ranges.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(BundleError::Layout(format!(
                "blobs {} and {} overlap",
                w[0].2, w[1].2
            )));
        }
    }
    Ok(())
}

/// A module's constants to unpack and the graph once unpacked.
type Packed = (Vec<PackedConstant>, OnceLock<Graph>);

/// Every module's graph, and the packed constants of those that have some.
type Modules = (BTreeMap<String, Graph>, BTreeMap<String, Packed>);

/// Builds and checks every module's graph.
fn load_modules(map: &Arc<Mmap>, manifest: &Manifest) -> Result<Modules, BundleError> {
    let (weights_at, weights_len) = weights_range(manifest)?;
    check_blobs(manifest, weights_len)?;
    let ir_sections: HashMap<&str, &super::format::SectionEntry> = manifest
        .sections
        .iter()
        .filter(|s| s.kind == SectionKind::Ir)
        .map(|s| (s.name.as_str(), s))
        .collect();
    let code_weights: HashMap<&str, &SectionEntry> = manifest
        .sections
        .iter()
        .filter(|s| s.kind == SectionKind::CodeWeights)
        .map(|s| (s.name.as_str(), s))
        .collect();
    let mut used_ir = BTreeSet::new();
    let mut graphs = BTreeMap::new();
    let mut all_packed = BTreeMap::new();
    for m in &manifest.modules {
        if !is_valid_name(&m.name) {
            return Err(BundleError::Manifest(format!(
                "invalid module name {:?}",
                m.name
            )));
        }
        let Some(section) = ir_sections.get(m.ir_section.as_str()) else {
            return Err(BundleError::module(
                &m.name,
                format!("its IR section `{}` does not exist", m.ir_section),
            ));
        };
        if !used_ir.insert(m.ir_section.as_str()) {
            return Err(BundleError::module(
                &m.name,
                format!("IR section `{}` is used by another module", m.ir_section),
            ));
        }
        let text = &map[section.offset as usize..(section.offset + section.len) as usize];
        let (graph, packed) = load_module(map, manifest, m, text, weights_at, &code_weights)?;
        if !packed.is_empty() {
            all_packed.insert(m.name.clone(), (packed, OnceLock::new()));
        }
        if graphs.insert(m.name.clone(), graph).is_some() {
            return Err(BundleError::Manifest(format!(
                "module `{}` appears twice",
                m.name
            )));
        }
    }
    if let Some(unused) = ir_sections.keys().find(|n| !used_ir.contains(*n)) {
        return Err(BundleError::Manifest(format!(
            "section ir `{unused}` belongs to no module"
        )));
    }
    Ok((graphs, all_packed))
}

/// The tensor a weight entry describes: a slice of the map (never a copy),
/// after checking that its blob exists and has exactly its size.
pub(crate) fn mapped_tensor(
    map: &Arc<Mmap>,
    manifest: &Manifest,
    weights_at: usize,
    w: &WeightEntry,
) -> Result<Tensor, String> {
    let dtype: DType = w.dtype.parse()?;
    let blob = manifest.blobs.get(w.blob).ok_or_else(|| {
        format!(
            "blob {} does not exist ({} blobs)",
            w.blob,
            manifest.blobs.len()
        )
    })?;
    let bytes = w
        .shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .and_then(|n| n.checked_mul(dtype.size_bits()))
        .map(|bits| bits.div_ceil(8));
    if bytes != Some(blob.len as usize) {
        return Err(format!(
            "{dtype}{:?} does not fit blob {} ({} bytes)",
            w.shape, w.blob, blob.len
        ));
    }
    Ok(Tensor {
        dtype,
        shape: w.shape.clone(),
        storage: Storage::Mapped {
            map: Arc::clone(map),
            offset: weights_at + blob.offset as usize,
            len: blob.len as usize,
            // A bundle's map may be anonymous memory (`Bundle::from_bytes`).
            file: false,
        },
    })
}

/// One module: weight tables → mapped tensors, IR text → verified graph in
/// which exactly the tables' constants are mapped, or absent and listed
/// as packed constants (returned) when the code stores them in panels.
fn load_module(
    map: &Arc<Mmap>,
    manifest: &Manifest,
    m: &ModuleEntry,
    text: &[u8],
    weights_at: usize,
    code_weights: &HashMap<&str, &SectionEntry>,
) -> Result<(Graph, Vec<PackedConstant>), BundleError> {
    let err = |msg: String| BundleError::module(&m.name, msg);
    if let Some(both) = m.code_weights.keys().find(|k| m.weights.contains_key(*k)) {
        return Err(err(format!(
            "code weight %{both}: also in the weight table"
        )));
    }
    let mut weights = HashMap::new();
    for (value, w) in &m.weights {
        let tensor = mapped_tensor(map, manifest, weights_at, w)
            .map_err(|e| err(format!("weight %{value}: {e}")))?;
        weights.insert(value.clone(), tensor);
    }
    let mut to_unpack = HashMap::new();
    for (value, w) in &m.code_weights {
        let fail = |e: String| err(format!("code weight %{value}: {e}"));
        let section = m
            .code
            .iter()
            .any(|c| c.section == w.section)
            .then(|| code_weights.get(w.section.as_str()))
            .flatten()
            .ok_or_else(|| {
                fail(format!(
                    "section `{}` is no code-weights section of the module",
                    w.section
                ))
            })?;
        let range = section.offset as usize..(section.offset + section.len) as usize;
        match resolve(map, range, w).map_err(fail)? {
            Resolved::Mapped(t) => {
                weights.insert(value.clone(), t);
            }
            Resolved::Packed {
                range,
                packed,
                transposed,
            } => {
                to_unpack.insert(value.as_str(), (w, range, packed, transposed));
            }
        }
    }
    let text = std::str::from_utf8(text).map_err(|e| err(format!("IR is not UTF-8: {e}")))?;
    let graph = m4c_ir::text::parse(text, &weights).map_err(|e| err(e.to_string()))?;
    graph.verify().map_err(|e| err(e.to_string()))?;
    let mut mapped = BTreeSet::new();
    let mut packed = vec![];
    for id in graph.constants() {
        let v = graph.value(id);
        match graph.constant(id) {
            Some(
                t @ Tensor {
                    storage: Storage::Absent,
                    ..
                },
            ) => {
                let Some((w, range, panels, transposed)) = to_unpack.get(v.name.as_str()) else {
                    return Err(err(format!(
                        "weight %{} has no entry in the weight table",
                        v.name
                    )));
                };
                if t.dtype != DType::F32 || t.shape != w.shape {
                    return Err(err(format!(
                        "code weight %{}: the IR declares {}{:?}, the entry f32{:?}",
                        v.name, t.dtype, t.shape, w.shape
                    )));
                }
                if !mapped.insert(v.name.as_str()) {
                    return Err(err(format!("weight %{} is declared twice", v.name)));
                }
                packed.push(PackedConstant {
                    value: id.index(),
                    range: range.clone(),
                    packed: *panels,
                    transposed: *transposed,
                });
            }
            Some(Tensor {
                storage: Storage::Mapped { .. },
                ..
            }) => {
                mapped.insert(v.name.as_str());
            }
            _ => {}
        }
    }
    let listed = m.weights.keys().chain(m.code_weights.keys());
    if let Some(extra) = listed.into_iter().find(|k| !mapped.contains(k.as_str())) {
        return Err(err(format!(
            "weight table entry %{extra} is not a weight constant of the IR"
        )));
    }
    Ok((graph, packed))
}
