//! Errors of the device side.

use std::path::PathBuf;

/// Everything that can go wrong while loading or calling compiled kernels.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A file of the artifact could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The manifest is not valid JSON of the expected shape.
    #[error("invalid manifest {path}: {source}")]
    Manifest {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// The shared library could not be opened or lacks a symbol.
    #[error("shared library {path}: {source}")]
    Library {
        path: PathBuf,
        source: libloading::Error,
    },
    /// The manifest and the files it describes disagree.
    #[error("artifact {path}: {reason}")]
    Inconsistent { path: PathBuf, reason: String },
    /// No kernel of that name is in the manifest.
    #[error("no kernel named `{0}` in the artifact")]
    UnknownKernel(String),
    /// A buffer handed to a kernel (or to packing) has the wrong length.
    #[error("{context}: operand {operand} has {actual} elements, expected {expected}")]
    Shape {
        context: String,
        operand: &'static str,
        expected: usize,
        actual: usize,
    },
    /// A kernel reported data outside its operator's domain (an index out
    /// of range, an integer division by zero): the run's results are void.
    #[error("kernel `{symbol}`: {reason}")]
    Kernel { symbol: String, reason: String },
    /// A thread pool was asked for zero threads.
    #[error("thread count must be at least 1")]
    NoThreads,
    /// A thread pool was asked for more threads than [`crate::max_threads`].
    #[error("{requested} threads requested; at most {max} (4 per hardware thread)")]
    TooManyThreads { requested: usize, max: usize },
    /// The operating system refused to start a worker thread.
    #[error("cannot start worker thread: {0}")]
    Spawn(std::io::Error),
}
