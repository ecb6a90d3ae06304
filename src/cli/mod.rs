//! Subcommands of the `m4c` binary.

mod npu;

use clap::{Parser, Subcommand};

/// The error type every subcommand returns; `main` prints it on one line and
/// exits with status 2.
pub type CliResult<T> = Result<T, Box<dyn std::error::Error>>;

/// m4c: an ahead-of-time compiler of ONNX models for NPU-style accelerators.
#[derive(Parser)]
#[command(name = "m4c", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The simulated NPU: assemble, disassemble, simulate, generate layers.
    Npu(npu::NpuArgs),
}

/// Runs one parsed command line; the `Ok` value is the process exit code.
pub fn dispatch(cli: Cli) -> CliResult<i32> {
    match cli.command {
        Command::Npu(args) => npu::run(args),
    }
}
