//! Errors of building a bundle.

use std::path::PathBuf;

use crate::FrontendError;

/// Why a bundle could not be built; each names the module or file.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("no modules given")]
    NoModules,
    #[error(
        "module name {0:?} is invalid (use ASCII letters, digits, `_`, `-`, `.`; at most 128)"
    )]
    InvalidName(String),
    #[error("module `{0}` is given twice")]
    DuplicateModule(String),
    #[error("module `{module}`: {source}")]
    Frontend {
        module: String,
        source: FrontendError,
    },
    #[error("module `{module}`: {msg}")]
    Pack { module: String, msg: String },
    #[error("adapter {0}")]
    Adapter(String),
    #[error(transparent)]
    Output(#[from] m4c_runtime::outfile::OutputError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}
