//! m4c CPU backend, compiler side: generates machine code for the CPU with
//! LLVM (through inkwell) and writes artifacts that `m4c-cpu-device` loads.

mod error;
mod ir;
mod machine;
mod target;

pub use error::CodegenError;
pub use machine::Machine;
pub use target::{Arch, Isa, Target};
