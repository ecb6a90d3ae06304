//! Subcommands of the `m4c` binary.

mod adapt;
mod backend;
mod bench;
mod coverage;
mod firmware;
mod inspect;
mod model_args;
mod npu;
mod opt;
mod partition;
mod run;
mod scale;
mod task;

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
    /// Show a model's ONNX ops, parameters, IR ops after lowering and
    /// anything that does not lower.
    Inspect(inspect::InspectArgs),
    /// Run a model with the reference interpreter on .npz inputs; compare
    /// with reference outputs (exit 1 when out of tolerance).
    Run(run::RunArgs),
    /// Performance measurements (GEMM GFLOP/s vs this machine's FMA peak).
    Bench(bench::BenchArgs),
    /// Operator coverage of a set of models (the paper's Fig. 14): op types
    /// per group, growth, usage frequency, which models lower fully.
    Coverage(coverage::CoverageArgs),
    /// Deployable bundles: build an M4 firmware from ONNX modules, show one.
    Firmware(firmware::FirmwareArgs),
    /// Optimise a model (adapters, LoRA policy, e-graph rewriting, fusion);
    /// print the optimised IR and a report.
    Opt(opt::OptArgs),
    /// Split models into NPU sub-graphs and CPU fallback (the paper's
    /// Fig. 2 table, or --json).
    Partition(partition::PartitionArgs),
    /// Pack a PEFT LoRA adapter for one firmware (an .m4a adapter bundle
    /// bound to its content hash).
    Adapt(adapt::AdaptArgs),
    /// Run a task of a task manifest (the paper's execution paths 1–4).
    Task(task::TaskArgs),
    /// Storage and peak RSS of firmware + N adapters vs N task-specific
    /// models (the paper's Fig. 11).
    ScaleReport(scale::ScaleArgs),
    /// The simulated NPU: assemble, disassemble, simulate, generate layers.
    Npu(npu::NpuArgs),
}

/// Runs one parsed command line; the `Ok` value is the process exit code.
pub fn dispatch(cli: Cli) -> CliResult<i32> {
    match cli.command {
        Command::Inspect(args) => inspect::run(args),
        Command::Run(args) => run::run(args),
        Command::Npu(args) => npu::run(args),
        Command::Adapt(args) => adapt::run(args),
        Command::Task(args) => task::run(args),
        Command::ScaleReport(args) => scale::run(args),
        Command::Opt(args) => opt::run(args),
        Command::Partition(args) => partition::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Coverage(args) => coverage::run(args),
        Command::Firmware(args) => firmware::run(args),
    }
}
