//! `m4c npu ...` (owned by the NPU backend work; replaced as it lands).

use super::CliResult;

/// Arguments of `m4c npu`.
#[derive(clap::Args)]
pub struct NpuArgs {
    #[command(subcommand)]
    command: NpuCommand,
}

#[derive(clap::Subcommand)]
enum NpuCommand {}

/// Runs `m4c npu ...`; returns the exit code.
pub fn run(args: NpuArgs) -> CliResult<i32> {
    match args.command {}
}
