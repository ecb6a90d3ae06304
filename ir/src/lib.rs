//! The m4c intermediate representation.
//!
//! A [`Graph`] of operations drawn from a closed set of at most 39
//! operators ([`OpKind::ALL`]), over tensors of the element types an NPU
//! stores ([`DType`]). Weights are referenced where they lie (a memory map of
//! the model file), never copied ([`Storage`]). The IR has a verifier
//! ([`Graph::verify`]) and a textual form ([`text`]) that round-trips.

// Input-derived data is checked, never unwrapped: each remaining `expect` states
// the invariant that makes it unreachable (`#[allow(..., reason = ...)]`).
#![deny(clippy::unwrap_used, clippy::expect_used)]

mod decompose;
mod dtype;
mod error;
mod graph;
mod infer;
pub mod op;
mod rebuild;
mod shape;
mod tensor;
pub mod text;
mod verify;

pub use decompose::decompose;
pub use dtype::DType;
pub use error::IrError;
pub use graph::{Graph, Node, Value, ValueDef, ValueId};
pub use infer::infer_type;
pub use op::{Cost, Flops, Npu, Op, OpInfo, OpKind, Unit};
pub use rebuild::Rebuild;
pub use shape::{broadcast_shapes, Dim, TensorType};
pub use tensor::{Storage, Tensor};
