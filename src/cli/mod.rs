//! Subcommands of the `m4c` binary.

mod adapt;
mod adapter;
mod backend;
mod backends;
mod bench;
mod compile;
mod coverage;
mod firmware;
mod generate;
mod inspect;
mod keygen;
mod memory;
mod model_args;
mod npu;
mod npu_backend;
mod opt;
mod partition;
mod progress;
mod quantize;
mod run;
mod scale;
mod task;

use clap::{Parser, Subcommand};

/// The error type every subcommand returns; `main` prints it on one line and
/// exits with status 2.
pub type CliResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Long help of `m4c`: the commands in the order a user meets them.
const OVERVIEW: &str = "\
m4c compiles ONNX models (M4's encoders and LLaMA backbone, task-specific
models, LoRA adapters) onto a closed 39-operator IR and runs them on a
backend: the reference interpreter, compiled CPU code, or a simulated NPU.

Typical session:
  m4c backends                                what can compile, what runs here
  m4c inspect model.onnx                      what is in it, does it lower
  m4c run model.onnx --inputs in.npz --expect ref.npz [--backend cpu]
  m4c quantize model.onnx --calibrate in.npz --scheme int8 -o q.onnx --report rep/
  m4c run q.onnx --inputs in.npz --expect ref.npz --min-cosine 0.98
  m4c opt backbone.onnx --adapter peft_dir --lora auto -o backbone.ir
  m4c run backbone.ir --inputs in.npz --backend cpu
  m4c compile model.onnx --backend cpu --target aarch64 -o artifact/
  m4c firmware build --module backbone=llama.onnx --module img_enc=clip.onnx --backend cpu -o M4.fw
  m4c adapt M4.fw --module backbone --adapter peft_dir -o app.m4a
  m4c generate M4.fw --module backbone --adapter app.m4a --prompt-ids 1,2,3 --max-new-tokens 16
  m4c run M4.fw --module backbone --adapter app.m4a --inputs in.npz
  m4c coverage models/*.onnx --group m4='m4/*.onnx' --out report/
  m4c npu gemm --m 197 --k 768 --n 768 --config edge-small --json

Exit status: 0 success, 1 outputs out of tolerance (run --expect),
2 any error (one line on stderr naming the problem and the place).";

/// m4c: an ahead-of-time compiler of ONNX models for NPU-style accelerators.
#[derive(Parser)]
#[command(name = "m4c", version, about, long_about = OVERVIEW)]
pub struct Cli {
    /// The most memory one tensor or file read may claim before anything
    /// is allocated (constant folding, the interpreter, npz/npy headers,
    /// ONNX tensors), e.g. `512M`, `4G`; default: half of physical memory,
    /// at most 8 GiB. Exceeding it is a one-line error, exit 2.
    #[arg(long, global = true, value_name = "SIZE", value_parser = parse_size)]
    max_memory: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

/// `123`, `64K`, `512M`, `4G` (powers of 1024).
fn parse_size(s: &str) -> Result<usize, String> {
    let (digits, shift) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (&s[..s.len() - 1], 10),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 20),
        Some(b'G' | b'g') => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("'{s}' is not a size (e.g. 512M, 4G)"))
}

#[derive(Subcommand)]
enum Command {
    /// List the registered backends: what each compiles (IR ops, element
    /// types, targets) and whether this host runs its code.
    Backends(backends::BackendsArgs),
    /// Show a model's ONNX ops, parameters, IR ops after lowering and
    /// anything that does not lower.
    Inspect(inspect::InspectArgs),
    /// Operator coverage of a set of models (the paper's Fig. 14): op types
    /// per group, growth, usage frequency, which models lower fully.
    Coverage(coverage::CoverageArgs),
    /// Run a model, an IR file or a firmware module on .npz inputs on a
    /// backend; compare with reference outputs (exit 1 when out of
    /// tolerance).
    Run(run::RunArgs),
    /// Post-training quantisation: calibrate on .npz samples and write a
    /// QDQ / MatMulInteger / MatMulNBits ONNX model, its encodings and an
    /// accuracy report.
    Quantize(quantize::QuantizeArgs),
    /// Optimise a model (adapters, LoRA policy, e-graph rewriting, fusion);
    /// print the optimised IR (or write it with -o) and a report.
    Opt(opt::OptArgs),
    /// Compile a model with one backend into a standalone artifact
    /// directory (CPU: shared library or, for cross targets, an object).
    Compile(compile::CompileArgs),
    /// Split models into NPU sub-graphs and CPU fallback (the paper's
    /// Fig. 2 table, or --json).
    Partition(partition::PartitionArgs),
    /// Deployable bundles: build an M4 firmware from ONNX modules, show one.
    Firmware(firmware::FirmwareArgs),
    /// Make a firmware signing key pair: KEY (secret) and KEY.pub (give
    /// it to `--trust-key` or the trust directory).
    Keygen(keygen::KeygenArgs),
    /// Pack a PEFT LoRA adapter for one firmware (an .m4a adapter bundle
    /// bound to its content hash).
    Adapt(adapt::AdaptArgs),
    /// Generate text with a KV cache: the prompt in one prefill call, then
    /// one decode step per token (a decoder with past: ONNX, IR, or a
    /// firmware module with an adapter).
    Generate(generate::GenerateArgs),
    /// Inspect an adapter bundle (.m4a): sites, ranks, scales, modules,
    /// the firmware it is bound to.
    Adapter(adapter::AdapterArgs),
    /// Run a task of a task manifest (the paper's execution paths 1–4).
    Task(task::TaskArgs),
    /// Storage and peak RSS of firmware + N adapters vs N task-specific
    /// models (the paper's Fig. 11).
    ScaleReport(scale::ScaleArgs),
    /// Performance: GEMM GFLOP/s vs this machine's measured FMA peak, and
    /// whole-model latency (median) per backend.
    Bench(bench::BenchArgs),
    /// The simulated NPU: assemble, disassemble, simulate, generate layers.
    Npu(npu::NpuArgs),
}

/// Runs one parsed command line; the `Ok` value is the process exit code.
pub fn dispatch(cli: Cli) -> CliResult<i32> {
    if let Some(bytes) = cli.max_memory {
        m4c_ops::budget::set_max_memory(bytes);
    }
    match cli.command {
        Command::Backends(args) => backends::run(args),
        Command::Compile(args) => compile::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Coverage(args) => coverage::run(args),
        Command::Run(args) => run::run(args),
        Command::Quantize(args) => quantize::run(args),
        Command::Opt(args) => opt::run(args),
        Command::Partition(args) => partition::run(args),
        Command::Firmware(args) => firmware::run(args),
        Command::Adapt(args) => adapt::run(args),
        Command::Adapter(args) => adapter::run(args),
        Command::Keygen(args) => keygen::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Task(args) => task::run(args),
        Command::ScaleReport(args) => scale::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Npu(args) => npu::run(args),
    }
}
