//! Errors of the ONNX frontend.

use std::fmt;
use std::path::PathBuf;

/// A node the frontend could not lower, with where it was found.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct UnsupportedNode {
    pub op_type: String,
    pub domain: String,
    pub node: String,
    pub opset: i64,
    pub reason: String,
}

impl fmt::Display for UnsupportedNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let domain = if self.domain.is_empty() {
            String::new()
        } else {
            format!("{}.", self.domain)
        };
        write!(
            f,
            "{domain}{} (node '{}', opset {}): {}",
            self.op_type, self.node, self.opset, self.reason
        )
    }
}

/// Everything that can go wrong reading or lowering an ONNX model. Each
/// message names the file and, where there is one, the node or tensor.
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid ONNX protobuf ({msg})")]
    Protobuf { path: PathBuf, msg: String },
    #[error("{path}: model has no graph")]
    NoGraph { path: PathBuf },
    #[error("{path}: {msg}")]
    Opset { path: PathBuf, msg: String },
    #[error("{path}: tensor '{tensor}': {msg}")]
    Tensor {
        path: PathBuf,
        tensor: String,
        msg: String,
    },
    #[error("{path}: input '{input}': {msg}")]
    Input {
        path: PathBuf,
        input: String,
        msg: String,
    },
    #[error("{path}: {} node(s) cannot be lowered: {}", .nodes.len(), list(.nodes))]
    Unsupported {
        path: PathBuf,
        nodes: Vec<UnsupportedNode>,
    },
    #[error("{path}: lowered graph fails verification: {source}")]
    Verify {
        path: PathBuf,
        source: m4c_ir::IrError,
    },
}

fn list(nodes: &[UnsupportedNode]) -> String {
    nodes
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}
