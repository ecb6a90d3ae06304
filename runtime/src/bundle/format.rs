//! The definitions both the writer (m4c-compiler) and the reader share:
//! header layout, section kinds and the manifest's schema. The normative
//! description is `docs/BUNDLE.md`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The first eight bytes of every bundle. As PNG's signature: a non-ASCII
/// first byte, then CR LF, ^Z and LF, so that text-mode transfers and
/// truncation to 7 bits are detected at once.
pub const MAGIC: [u8; 8] = *b"\x89M4C\r\n\x1a\n";

/// The format version the compiler writes. Any change of layout, manifest
/// schema or section kinds increments it.
pub const FORMAT_VERSION: u32 = 5;

/// The oldest format version this runtime still reads: version 4 lacks
/// only [`ModuleEntry::code_weights`] (every weight in the weights
/// section), so its manifests are version 5 manifests.
pub const MIN_FORMAT_VERSION: u32 = 4;

/// Size of the fixed header; the manifest starts right after it.
pub const HEADER_LEN: usize = 64;

/// Alignment of every section and of every weight inside the weights
/// section (a cache line, and enough for any SIMD load).
pub const ALIGN: usize = 64;

/// Rounds `n` up to a multiple of [`ALIGN`], `None` on overflow.
pub fn align_up(n: usize) -> Option<usize> {
    n.checked_next_multiple_of(ALIGN)
}

/// The fixed 64-byte header, all integers little-endian:
///
/// | bytes  | field                                               |
/// |--------|-----------------------------------------------------|
/// | 0..8   | [`MAGIC`]                                           |
/// | 8..12  | format version (u32)                                |
/// | 12..16 | reserved, zero                                      |
/// | 16..24 | manifest length in bytes (u64); it starts at 64     |
/// | 24..32 | reserved, zero                                      |
/// | 32..64 | content hash: BLAKE3 of bytes 0..32 ++ the manifest |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub manifest_len: u64,
    pub content_hash: [u8; 32],
}

impl Header {
    /// The header's 64 bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[16..24].copy_from_slice(&self.manifest_len.to_le_bytes());
        b[32..64].copy_from_slice(&self.content_hash);
        b
    }
}

/// What a section holds. The set is closed for a format version: a reader
/// refuses kinds it does not know rather than skipping them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SectionKind {
    /// Every weight of every module, deduplicated by content, each at a
    /// 64-byte-aligned offset.
    Weights,
    /// One module's graph in the IR's textual form (UTF-8).
    Ir,
    /// One module's compiled code for one CPU target: the shared library
    /// the CPU backend linked (named `<module>.<target>`).
    Code,
    /// The plan of a `code` section of the same name: the CPU backend's
    /// artifact manifest (kernels, execution plan, arena size), JSON.
    CodePlan,
    /// The packed weights of a `code` section of the same name (GEMM
    /// operands in panel layout and other constants, little-endian f32).
    CodeWeights,
}

impl fmt::Display for SectionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SectionKind::Weights => "weights",
            SectionKind::Ir => "ir",
            SectionKind::Code => "code",
            SectionKind::CodePlan => "code-plan",
            SectionKind::CodeWeights => "code-weights",
        })
    }
}

/// The backend name of modules that carry no compiled code: their IR is
/// run by the reference interpreter (`m4c_ops::run_graph`).
pub const REFERENCE_BACKEND: &str = "reference";

/// What the bundle as a whole is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BundleKind {
    /// Shared modules installed once (the paper's M4 "firmware").
    Firmware,
    /// One app's LoRA factors, bound to one firmware by its content hash
    /// (no modules, no IR: [`Manifest::adapter`] says where they attach).
    Adapter,
}

impl fmt::Display for BundleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BundleKind::Firmware => "firmware",
            BundleKind::Adapter => "adapter",
        })
    }
}

/// How an adapter's LoRA branches run once attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoraMode {
    /// `y = x·W + s·(x·Aᵀ)·Bᵀ`: the firmware's weights stay shared (mapped);
    /// the app costs only its factors.
    #[default]
    Keep,
    /// `W' = W + s·Aᵀ·Bᵀ` computed at load: one MatMul per site, but each
    /// adapted weight becomes a private copy.
    Fold,
}

impl fmt::Display for LoraMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LoraMode::Keep => "keep",
            LoraMode::Fold => "fold",
        })
    }
}

impl FromStr for LoraMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "keep" => Ok(LoraMode::Keep),
            "fold" => Ok(LoraMode::Fold),
            other => Err(format!("unknown LoRA mode '{other}' (known: keep, fold)")),
        }
    }
}

/// One adapted linear layer of an adapter bundle: PEFT's factors
/// (`a` = lora_A `[r, in]`, `b` = lora_B `[out, r]`) and scale, attached to
/// the MatMul whose output name carries the module path `target`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterSite {
    pub a: WeightEntry,
    pub b: WeightEntry,
    pub scale: f64,
    /// Module path, e.g. `model.layers.0.self_attn.q_proj`.
    pub target: String,
}

/// What an adapter bundle adds to the manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterManifest {
    /// Content hash (hex) of the only firmware this adapter may be loaded
    /// with.
    pub firmware: String,
    pub lora: LoraMode,
    /// The firmware modules it was checked against when built (and is
    /// applied to by default), sorted.
    pub modules: Vec<String>,
    /// Where the factors came from (the PEFT directory's name).
    pub name: String,
    /// Sorted by target.
    pub sites: Vec<AdapterSite>,
}

/// One section: a byte range of the file and its BLAKE3 checksum (hex).
/// Fields are declared in alphabetical order so the JSON's keys are sorted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SectionEntry {
    pub blake3: String,
    pub kind: SectionKind,
    pub len: u64,
    /// Unique among sections of the same kind (the module name for `ir`).
    pub name: String,
    /// Absolute file offset, a multiple of [`ALIGN`].
    pub offset: u64,
}

/// A byte range inside the weights section holding one distinct tensor
/// content; several weights (of one or many modules) may share it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Blob {
    pub len: u64,
    /// Offset relative to the weights section, a multiple of [`ALIGN`].
    pub offset: u64,
}

/// One weight of a module: the IR constant it fills, its type, its blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightEntry {
    /// Index into [`Manifest::blobs`].
    pub blob: usize,
    /// Element type as the IR spells it (`f32`, `i64`, ...).
    pub dtype: String,
    pub shape: Vec<usize>,
}

/// One module: where its IR lives and which blobs fill its weights.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleEntry {
    /// The backend the module was compiled for: [`REFERENCE_BACKEND`] (the
    /// IR only) or the registry name of a code generator (`cpu`, ...),
    /// whose device loader the runtime looks up by this name
    /// (`crate::exec::device`). The IR stays in the bundle in every case,
    /// for hosts the code cannot run on and for adapted modules.
    pub backend: String,
    /// Compiled code, one entry per target of `backend`; empty exactly
    /// when `backend` is [`REFERENCE_BACKEND`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub code: Vec<CodeEntry>,
    /// The symbolic dimensions and the values they were bound to.
    pub dims: BTreeMap<String, usize>,
    /// Name of the `ir` section holding the graph text.
    pub ir_section: String,
    pub name: String,
    /// BLAKE3 (hex) of the model file the module was built from.
    pub source_blake3: String,
    /// IR constant name → weight.
    pub weights: BTreeMap<String, WeightEntry>,
    /// IR constant name → weight read from the module's compiled code
    /// instead of the weights section, so that a weight the code already
    /// stores is not stored twice (disjoint from `weights`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub code_weights: BTreeMap<String, CodeWeight>,
}

/// A weight of the IR read from a module's `code-weights` section: the
/// interpreter (hosts the code cannot run on, adapters) gets it from the
/// bytes the compiled code reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeWeight {
    /// Element type as the IR spells it.
    pub dtype: String,
    /// How the code stores the tensor.
    pub layout: CodeWeightLayout,
    /// Byte offset inside the section, a multiple of [`ALIGN`].
    pub offset: u64,
    /// Name of the `code-weights` section (one of the module's code
    /// entries).
    pub section: String,
    pub shape: Vec<usize>,
}

/// How a [`CodeWeight`]'s bytes relate to the IR tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum CodeWeightLayout {
    /// The tensor's own bytes, used in place.
    Bytes,
    /// An `f32` GEMM operand B in the CPU code's panel layout
    /// ([`m4c_cpu_device::PackedPanels`]); the IR tensor is B (`k × n`)
    /// or, when `transposed`, Bᵀ (`n × k`), after leading 1s. Unpacked
    /// (a copy) when the interpreter first needs the module.
    Panels {
        packed: m4c_cpu_device::PackedPanels,
        transposed: bool,
    },
}

/// One compiled variant of a module: the sections of one name
/// (`<module>.<target>`) that its backend's artifact holds (for the CPU
/// backend: `code`, `code-plan` and `code-weights`), opaque to the bundle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeEntry {
    /// The backend's tuning of the code (the CPU backend's LLVM CPU name,
    /// e.g. `znver4`); may be empty.
    pub cpu: String,
    /// Name of the sections.
    pub section: String,
    /// The backend's target (CPU: `x86_64-avx512`, `x86_64-avx2`,
    /// `aarch64`): what a host must be to run the code.
    pub target: String,
}

/// The JSON manifest right after the header.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Present exactly in adapter bundles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<AdapterManifest>,
    pub blobs: Vec<Blob>,
    pub kind: BundleKind,
    /// Sorted by name.
    pub modules: Vec<ModuleEntry>,
    /// In file order.
    pub sections: Vec<SectionEntry>,
}

/// True for names usable as module and section names: non-empty,
/// ASCII letters, digits, `_`, `-`, `.`, at most 128 characters.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
}
