//! Compiled code in a bundle: per module and target, the sections a
//! backend's artifact holds (`<module>.<target>`), opaque here. When the
//! bundle is opened each module's code is checked by the device loader of
//! its backend (`crate::exec::device`) against the module's IR, so that
//! loading can trust it; code of a backend this runtime has no device for
//! is kept unchecked and never loaded.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;
use std::sync::Arc;

use m4c_ir::Graph;
use memmap2::{Mmap, MmapMut};

use super::format::{CodeEntry, Manifest, SectionEntry, SectionKind, REFERENCE_BACKEND};
use super::BundleError;
use crate::exec::device;

/// The section kinds a code entry may hold.
const CODE_KINDS: [SectionKind; 3] = [
    SectionKind::Code,
    SectionKind::CodePlan,
    SectionKind::CodeWeights,
];

/// Sections start on cache lines in an in-memory code map (as in a bundle).
const SECTION_ALIGN: usize = 64;

/// One section of a module's code: where it lies in the map and the
/// BLAKE3 (hex) the bundle's manifest records for it (`None` for code
/// compiled in this process, whose bytes never left its read-only map).
#[derive(Clone, Debug)]
struct Section {
    kind: SectionKind,
    range: Range<usize>,
    blake3: Option<String>,
}

/// One module's code for one target of one backend: its sections, in a
/// shared read-only map (the bundle's, or an anonymous one holding a
/// freshly compiled artifact).
#[derive(Clone)]
pub struct ModuleCode {
    map: Arc<Mmap>,
    backend: String,
    entry: CodeEntry,
    sections: Vec<Section>,
}

impl std::fmt::Debug for ModuleCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleCode")
            .field("backend", &self.backend)
            .field("entry", &self.entry)
            .field("sections", &self.sections)
            .finish()
    }
}

impl ModuleCode {
    /// Code held in memory rather than in a bundle: `files` are laid into
    /// one read-only anonymous map, each on a 64-byte boundary as in a
    /// bundle, so that a device loads a just-compiled artifact exactly as
    /// it loads a bundle's (`m4c run --backend`, no disk round trip).
    pub fn from_memory(
        backend: &str,
        entry: CodeEntry,
        files: &[(SectionKind, &[u8])],
    ) -> Result<ModuleCode, String> {
        let mut layout = Vec::with_capacity(files.len());
        let mut len = 0usize;
        for (kind, bytes) in files {
            let start = len.next_multiple_of(SECTION_ALIGN);
            len = start
                .checked_add(bytes.len())
                .ok_or("code sections too large")?;
            layout.push((*kind, start..len));
        }
        let mut map = MmapMut::map_anon(len.max(1)).map_err(|e| format!("code map: {e}"))?;
        for ((_, bytes), (_, range)) in files.iter().zip(&layout) {
            map[range.clone()].copy_from_slice(bytes);
        }
        let map = map.make_read_only().map_err(|e| format!("code map: {e}"))?;
        let sections = layout
            .into_iter()
            .map(|(kind, range)| Section {
                kind,
                range,
                blake3: None,
            })
            .collect();
        Ok(ModuleCode {
            map: Arc::new(map),
            backend: backend.to_string(),
            entry,
            sections,
        })
    }

    /// The backend whose device loads it.
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// The manifest entry (target, tuning, section name).
    pub fn entry(&self) -> &CodeEntry {
        &self.entry
    }

    /// The bytes of the section of `kind` (a slice of the map).
    pub fn section(&self, kind: SectionKind) -> Option<&[u8]> {
        self.find(kind).map(|s| &self.map[s.range.clone()])
    }

    /// BLAKE3 (hex) the bundle records for the section of `kind`; `None`
    /// for code held in memory ([`Self::from_memory`]), which was never
    /// outside this process.
    pub fn blake3(&self, kind: SectionKind) -> Option<&str> {
        self.find(kind).and_then(|s| s.blake3.as_deref())
    }

    fn find(&self, kind: SectionKind) -> Option<&Section> {
        self.sections.iter().find(|s| s.kind == kind)
    }
}

/// Checks every module's code entries against the sections and, through
/// its backend's device, against the module's graph; code sections that
/// belong to no entry are refused.
pub(crate) fn load_code(
    map: &Arc<Mmap>,
    manifest: &Manifest,
    graphs: &BTreeMap<String, Graph>,
) -> Result<BTreeMap<String, Vec<ModuleCode>>, BundleError> {
    let by_kind = |kind: SectionKind| -> HashMap<&str, &SectionEntry> {
        manifest
            .sections
            .iter()
            .filter(|s| s.kind == kind)
            .map(|s| (s.name.as_str(), s))
            .collect()
    };
    let sections = CODE_KINDS.map(by_kind);
    let mut used = BTreeSet::new();
    let mut all = BTreeMap::new();
    for m in &manifest.modules {
        let err = |msg: String| BundleError::module(&m.name, msg);
        if !super::format::is_valid_name(&m.backend) {
            return Err(err(format!("backend name `{}` is not valid", m.backend)));
        }
        match (m.backend == REFERENCE_BACKEND, m.code.is_empty()) {
            (true, false) => {
                return Err(err(format!(
                    "backend `{REFERENCE_BACKEND}` but it lists compiled code"
                )))
            }
            (false, true) => {
                return Err(err(format!("backend `{}` but no compiled code", m.backend)))
            }
            _ => {}
        }
        let graph = &graphs[&m.name];
        let mut codes = vec![];
        for c in &m.code {
            if !used.insert(c.section.as_str()) {
                return Err(err(format!("code section `{}` is used twice", c.section)));
            }
            let found: Vec<Section> = CODE_KINDS
                .iter()
                .zip(&sections)
                .filter_map(|(&kind, names)| {
                    names.get(c.section.as_str()).map(|s| Section {
                        kind,
                        range: s.offset as usize..(s.offset + s.len) as usize,
                        blake3: Some(s.blake3.clone()),
                    })
                })
                .collect();
            if found.is_empty() {
                return Err(err(format!("code `{}` has no sections", c.section)));
            }
            let code = ModuleCode {
                map: Arc::clone(map),
                backend: m.backend.clone(),
                entry: c.clone(),
                sections: found,
            };
            if let Some(dev) = device::lookup(&m.backend) {
                dev.check(&code, graph)
                    .map_err(|e| err(format!("code `{}`: {e}", c.section)))?;
            }
            codes.push(code);
        }
        all.insert(m.name.clone(), codes);
    }
    for (kind, names) in CODE_KINDS.iter().zip(&sections) {
        if let Some(unused) = names.keys().find(|n| !used.contains(*n)) {
            return Err(BundleError::Manifest(format!(
                "section {kind} `{unused}` belongs to no module"
            )));
        }
    }
    Ok(all)
}
