//! Errors of the code generator.

use std::path::PathBuf;

/// Everything that can go wrong while generating, compiling or linking code.
#[derive(Debug, thiserror::Error)]
pub enum CodegenError {
    /// `--target` names no known target.
    #[error("unknown target `{0}` (expected host, x86_64, x86_64-avx512, x86_64-avx2 or aarch64)")]
    UnknownTarget(String),
    /// `--cpu` names a CPU this backend does not know for the target.
    #[error("unknown CPU `{cpu}` for {arch} (known: {known})")]
    UnknownCpu {
        cpu: String,
        arch: &'static str,
        known: String,
    },
    /// A target needs a CPU feature the host lacks, and code for it was
    /// asked to run here.
    #[error("target {target} cannot run on this host ({reason})")]
    NotRunnable { target: String, reason: String },
    /// A GEMM shape has a zero dimension.
    #[error("GEMM {m}x{k}x{n}: every dimension must be at least 1")]
    EmptyGemm { m: usize, k: usize, n: usize },
    /// An operation (or element type) this backend cannot compile.
    #[error("not supported by the CPU backend: {0}")]
    Unsupported(String),
    /// The graph cannot be compiled as given (symbolic shapes, bad
    /// constants, inconsistent types).
    #[error("graph `{graph}`: {reason}")]
    Graph { graph: String, reason: String },
    /// Inputs handed to a compiled graph do not match it.
    #[error("{0}")]
    Input(String),
    /// Two kernels of one artifact have the same symbol.
    #[error("two kernels are named `{0}`")]
    DuplicateSymbol(String),
    /// LLVM rejected something (target machine, verification, passes,
    /// emission, JIT).
    #[error("LLVM: {0}")]
    Llvm(String),
    /// Building an instruction failed (an internal inconsistency).
    #[error("LLVM IR builder: {0}")]
    Builder(#[from] inkwell::builder::BuilderError),
    /// The shared math library could not build its IR.
    #[error("math: {0}")]
    Math(#[from] m4c_llvm_math::MathError),
    /// A file of the artifact could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The system linker failed.
    #[error("linking {path} failed: {reason}")]
    Link { path: PathBuf, reason: String },
    /// An invariant of the code generator itself did not hold (a bug, not
    /// the input's fault): what was expected.
    #[error("internal error of the CPU code generator: expected {0}")]
    Internal(&'static str),
    /// The device side rejected something (shapes, packing).
    #[error(transparent)]
    Device(#[from] m4c_cpu_device::DeviceError),
}
