//! Errors of the optimiser.

/// Why optimisation failed.
#[derive(Debug, thiserror::Error)]
pub enum OptError {
    /// Evaluating a constant sub-expression failed.
    #[error("folding constant `{value}`: {reason}")]
    Fold { value: String, reason: String },
    /// Attaching or detecting adapters failed.
    #[error(transparent)]
    Adapter(#[from] crate::adapter::AdapterError),
    /// An invariant of the optimiser broke (a bug, reported instead of a panic).
    #[error("optimiser internal error: {0}")]
    Internal(String),
}
