//! The GPU backend, compiler side: a graph's kernels described once
//! ([`kernel`], one per fusion group of the shared plan, [`lower`]) and
//! emitted as WGSL ([`wgsl`], for wgpu) or PTX ([`ptx`], through LLVM's
//! NVPTX backend, for CUDA) with one launch geometry ([`launch`]);
//! [`GpuBackend`] is its `CodeGenerator`
//! (`docs/GPU_BACKEND.md`).

#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod backend;
pub mod kernel;
pub mod launch;
pub mod lower;
#[cfg(feature = "ptx")]
pub mod ptx;
pub mod wgsl;

pub use backend::GpuBackend;

#[cfg(test)]
mod tests;
