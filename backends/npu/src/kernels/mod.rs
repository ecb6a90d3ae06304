//! Kernel generators: Rust functions that turn layer shapes and
//! quantisation parameters into NPU programs, plus the plain Rust reference
//! implementations they are checked against.

mod builder;
pub mod conv;
pub mod data;
pub mod gemm;
mod pipeline;
pub mod reference;

pub use builder::ProgramBuilder;
pub use pipeline::TilePlan;

/// Why a kernel could not be generated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    /// A shape is zero or inconsistent.
    #[error("bad shape: {0}")]
    BadShape(String),
    /// An operand does not fit its instruction field.
    #[error("`{mnemonic}` field {field}={value} does not fit its encoding")]
    FieldRange {
        /// Mnemonic.
        mnemonic: &'static str,
        /// Field.
        field: &'static str,
        /// Value.
        value: i64,
    },
    /// The layer does not fit the machine's memories.
    #[error("does not fit: {0}")]
    DoesNotFit(String),
    /// A generator bug (the generated program failed validation).
    #[error("internal generator error: {0}")]
    Internal(String),
}
