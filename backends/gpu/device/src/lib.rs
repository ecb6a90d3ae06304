//! The GPU backend's device side: the plan a GPU artifact carries
//! ([`Manifest`]) and the runners: with the `wgpu` feature, WGSL kernels
//! through wgpu's Vulkan backend ([`wgpu_runner`]); with `cuda`, PTX
//! kernels through the CUDA driver (`cuda_runner`). No
//! compiler, no LLVM: the runtime links this crate to load GPU code from
//! bundles or from an artifact compiled in the same process.

#![deny(clippy::unwrap_used, clippy::expect_used)]

#[cfg(feature = "cuda")]
pub mod cuda_runner;
pub mod manifest;
#[cfg(feature = "wgpu")]
pub mod wgpu_runner;

pub use manifest::{
    Binding, KernelEntry, Manifest, Space, BINDING_BYTES, MAX_THREADS, MAX_WEIGHT_BINDINGS,
    MAX_WORKGROUPS,
};

/// Why GPU code could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// No adapter (driver) or no device could be had.
    #[error("no GPU: {0}")]
    NoDevice(String),
    /// The plan does not fit the module or the device.
    #[error("plan: {0}")]
    Plan(String),
    /// The driver refused the shader or a pipeline.
    #[error("shader: {0}")]
    Shader(String),
    /// A launch or a transfer failed.
    #[error("run: {0}")]
    Run(String),
}

/// Rounds `n` up to a multiple of 4 (the copy and binding granule).
pub fn align4(n: u64) -> u64 {
    n.div_ceil(4) * 4
}
