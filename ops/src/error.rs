//! Errors of the reference interpreter.

use m4c_ir::DType;

/// Everything that can go wrong while evaluating an operator or a graph.
///
/// Every message names the operator (or graph input / node) it is about, so a
/// failing run points at the place in the model.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// The inputs of an operator are not acceptable (element type, shape,
    /// index out of range, division by zero, ...).
    #[error("{op}: {msg}")]
    Invalid { op: &'static str, msg: String },
    /// A constant tensor could not be decoded.
    #[error("constant: {0}")]
    Tensor(#[from] m4c_ir::IrError),
    /// The number of graph inputs given differs from the graph's.
    #[error("graph `{graph}` takes {expected} inputs, {found} given")]
    InputCount {
        graph: String,
        expected: usize,
        found: usize,
    },
    /// A graph input does not match its declared type.
    #[error("input `{name}`: expected {expected}, got {found}")]
    InputType {
        name: String,
        expected: String,
        found: String,
    },
    /// An error raised while evaluating one node of a graph.
    #[error("node %{value} ({op}): {source}")]
    Node {
        value: String,
        op: &'static str,
        #[source]
        source: Box<OpsError>,
    },
}

impl OpsError {
    /// An [`OpsError::Invalid`] for operator `op`.
    pub fn invalid(op: &'static str, msg: impl Into<String>) -> Self {
        OpsError::Invalid {
            op,
            msg: msg.into(),
        }
    }

    /// The operator `op` does not accept element type `dtype`.
    pub fn dtype(op: &'static str, dtype: DType) -> Self {
        OpsError::invalid(op, format!("element type {dtype} is not supported"))
    }
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, OpsError>;
