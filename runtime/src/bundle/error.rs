//! Everything that can be wrong with a bundle file.

use std::path::PathBuf;

/// Why a bundle could not be read or used. Each message names the problem
/// and its place (byte range, section or module).
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Any other error of the bundle at `path`: every message names the
    /// file.
    #[error("{}: {source}", path.display())]
    In {
        path: PathBuf,
        source: Box<BundleError>,
    },
    #[error("truncated: {what} needs bytes up to offset {need}, the file has {len}")]
    Truncated { what: String, need: u64, len: u64 },
    #[error("not an m4c bundle (the file does not start with the m4c magic)")]
    BadMagic,
    #[error(
        "bundle format version {found} is not supported (this runtime reads versions {oldest} to {newest})"
    )]
    Version {
        found: u32,
        oldest: u32,
        newest: u32,
    },
    #[error("header: {0}")]
    Header(String),
    #[error("content hash mismatch: the header (bytes 0..64) or the manifest (bytes 64..{manifest_end}) is corrupted")]
    ContentHash { manifest_end: u64 },
    #[error("manifest: {0}")]
    Manifest(String),
    #[error("layout: {0}")]
    Layout(String),
    #[error(
        "checksum mismatch in section {section} (bytes {start}..{end}): the section is corrupted"
    )]
    Checksum {
        section: String,
        start: u64,
        end: u64,
    },
    #[error("this is a bundle of kind `{found}`, expected kind `{expected}`")]
    Kind {
        found: super::format::BundleKind,
        expected: super::format::BundleKind,
    },
    #[error("signature: {0}")]
    Signature(String),
    #[error("module `{module}`: {msg}")]
    Module { module: String, msg: String },
    #[error("no module `{name}` in the bundle (modules: {known})")]
    UnknownModule { name: String, known: String },
}

impl BundleError {
    /// This error, naming the bundle at `path` (once).
    pub fn at(self, path: &std::path::Path) -> Self {
        match self {
            e @ (BundleError::Io { .. } | BundleError::In { .. }) => e,
            e => BundleError::In {
                path: path.to_path_buf(),
                source: Box::new(e),
            },
        }
    }

    /// A problem with one module's IR or weight table.
    pub(crate) fn module(module: &str, msg: impl Into<String>) -> Self {
        BundleError::Module {
            module: module.to_string(),
            msg: msg.into(),
        }
    }
}
