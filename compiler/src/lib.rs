//! The m4c compiler: the ONNX frontend (parsing with tract-onnx's protobuf
//! types, lowering onto the IR with constant folding) and graph passes.
//!
//! ```no_run
//! use m4c_compiler::{lower, LowerOptions, OnnxModel};
//! let model = OnnxModel::load("model.onnx".as_ref())?;
//! let graph = lower(&model, &LowerOptions { default_dim: Some(1), ..Default::default() })?;
//! println!("{}", m4c_ir::text::print(&graph));
//! # Ok::<(), m4c_compiler::FrontendError>(())
//! ```

// Input-derived data is checked, never unwrapped: each remaining `expect` states
// the invariant that makes it unreachable (`#[allow(..., reason = ...)]`).
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod adapter;
pub mod backend;
pub mod bundle;
pub mod coverage;
mod error;
pub mod ir_file;
pub mod lower;
pub mod onnx;
pub mod opt;
pub mod partition;
pub mod passes;
pub mod quantize;

pub use error::{FrontendError, UnsupportedNode};
pub use lower::{lower, lower_report, LowerOptions, LowerReport};
pub use onnx::OnnxModel;
