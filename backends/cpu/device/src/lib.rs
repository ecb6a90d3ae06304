//! m4c CPU backend, device side.
//!
//! Everything the on-device runtime needs to run code that
//! `m4c-cpu-codegen` compiled ahead of time, and nothing that needs LLVM:
//! the artifact manifest, the packed-weight layout, a 64-byte aligned
//! buffer, packed weights owned or shared in place (a mapped bundle), the shared-library loader, a small thread pool that splits a
//! GEMM's column panels over the cores, and the executor that runs a whole
//! compiled graph from one pre-planned activation arena.

// No unwrap/expect on input: each remaining `expect` names its invariant
// (`#[allow(..., reason = ...)]`; see docs/SECURITY.md).
#![deny(clippy::unwrap_used, clippy::expect_used)]

mod aligned;
mod error;
mod executor;
mod gemm;
mod layout;
mod library;
mod manifest;
mod plan;
mod pool;
mod weights;

pub use aligned::AlignedBuffer;
pub use error::DeviceError;
pub use executor::{
    status_text, GraphExecutor, KernelFn, KERNEL_ABI, STATUS_DIVISION_BY_ZERO,
    STATUS_INDEX_OUT_OF_RANGE,
};
pub use gemm::{GemmEntry, GemmFn};
pub use layout::PackedPanels;
pub use library::{GemmKernel, KernelLibrary};
pub use manifest::{GemmManifest, Manifest, MANIFEST_FILE};
pub use plan::{BufRef, GraphPlan, Region, Step, TensorSpec};
pub use pool::{check_threads, max_threads, ThreadPool};
pub use weights::{SharedBytes, SHARED_WEIGHTS_ALIGN};
