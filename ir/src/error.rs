//! Errors raised while building, verifying or parsing IR.

use crate::DType;

/// Everything that can be wrong with an IR graph or its text.
#[derive(Debug, thiserror::Error)]
pub enum IrError {
    #[error("constant has no data (weight not loaded)")]
    MissingData,
    #[error("expected element type {expected}, found {found}")]
    DTypeMismatch { expected: DType, found: DType },
    #[error("bad constant: {0}")]
    BadConstant(String),
    #[error("{op}: {msg}")]
    Type { op: &'static str, msg: String },
    #[error("verifier: {0}")]
    Verify(String),
    #[error("IR text line {line}: {msg}")]
    Parse { line: usize, msg: String },
}

impl IrError {
    /// A type-inference error of operator `op`.
    pub fn ty(op: &'static str, msg: impl Into<String>) -> Self {
        IrError::Type {
            op,
            msg: msg.into(),
        }
    }
}
