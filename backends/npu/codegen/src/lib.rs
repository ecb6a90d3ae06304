//! The NPU backend's compile side: the support constraints
//! ([`constraints`]), calibration of a float graph on the reference
//! interpreter ([`calibrate`]), the partition into NPU and CPU-fallback
//! parts ([`split`]), the lowering of each NPU part onto the kernel
//! generators of `m4c-npu` ([`lower`]), and [`NpuBackend`], its
//! `CodeGenerator`. The runtime's `npu` device runs the result on the
//! simulator (`docs/NPU_BACKEND.md`).

// No unwrap/expect on input: each remaining `expect` names its invariant
// (`#[allow(..., reason = ...)]`; see docs/SECURITY.md).
#![deny(clippy::unwrap_used, clippy::expect_used)]

mod backend;
pub mod calibrate;
pub mod constraints;
mod conv;
mod fallback;
pub mod lower;
mod movement;
pub mod split;

pub use backend::{compile_calibrated, roofline, NpuBackend, DEFAULT_TARGET};
