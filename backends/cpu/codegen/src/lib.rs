//! m4c CPU backend, compiler side: generates machine code for the CPU with
//! LLVM (through inkwell) and writes artifacts that `m4c-cpu-device` loads.

#![deny(clippy::unwrap_used, clippy::expect_used)]

mod artifact;
mod backend;
mod bench;
mod error;
pub mod gemm;
mod graph;
mod ir;
mod jit;
mod kernels;
mod machine;
mod peak;
pub mod quant;
mod target;

pub use artifact::{ArtifactBuilder, BuiltArtifact};
pub use backend::CpuBackend;
pub use bench::{bench_gemm, GemmBenchConfig, GemmBenchReport};
pub use error::CodegenError;
pub use graph::{
    build_graph_artifact, compile_graph, write_graph_artifact, CompileOptions, CompileStats,
    CompiledGraph, CpuScheduler,
};
pub use jit::{JitGemm, JitModule};
pub use machine::Machine;
pub use peak::{measure_peak, Peak};
pub use target::{Arch, Isa, Target};
