//! m4c CPU backend, compiler side: generates machine code for the CPU with
//! LLVM (through inkwell) and writes artifacts that `m4c-cpu-device` loads.

mod artifact;
mod error;
pub mod gemm;
mod ir;
mod jit;
mod machine;
mod target;

pub use artifact::ArtifactBuilder;
pub use error::CodegenError;
pub use jit::{JitGemm, JitModule};
pub use machine::Machine;
pub use target::{Arch, Isa, Target};
