//! `m4c bench ...`: performance measurements (never pass/fail tests).

use std::time::Duration;

use m4c_cpu_codegen::{bench_gemm, GemmBenchConfig, Target};

use super::CliResult;

/// Arguments of `m4c bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(clap::Subcommand)]
enum BenchCommand {
    /// f32 GEMM C[m×n] = A[m×k]·B[k×n] on the CPU backend: median GFLOP/s
    /// and the fraction of the measured FP32 FMA peak.
    Gemm(GemmArgs),
}

#[derive(clap::Args)]
struct GemmArgs {
    /// Rows of A and C.
    #[arg(long)]
    m: usize,
    /// Columns of A, rows of B.
    #[arg(long)]
    k: usize,
    /// Columns of B and C.
    #[arg(long)]
    n: usize,
    /// Threads the GEMM is split over.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Code-generation target: host, x86_64, x86_64-avx512, x86_64-avx2.
    #[arg(long)]
    target: Option<String>,
    /// LLVM CPU name to tune for (validated), e.g. znver4.
    #[arg(long)]
    cpu: Option<String>,
    /// Timed runs at least (more are made until 1 s has passed).
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `m4c bench ...`; returns the exit code.
pub fn run(args: BenchArgs) -> CliResult<i32> {
    match args.command {
        BenchCommand::Gemm(args) => gemm(args),
    }
}

fn gemm(args: GemmArgs) -> CliResult<i32> {
    let config = GemmBenchConfig {
        target: Target::parse(args.target.as_deref(), args.cpu.as_deref())?,
        m: args.m,
        k: args.k,
        n: args.n,
        threads: args.threads,
        min_runs: args.runs.max(1),
        min_time: Duration::from_secs(1),
    };
    let report = bench_gemm(&config)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "gemm {}x{}x{} f32, {} thread(s), target {} ({})",
            report.m, report.k, report.n, report.threads, report.target, report.cpu
        );
        println!(
            "  median {:.3} ms (min {:.3} ms, {} runs)  {:.1} GFLOP/s",
            report.median_ms, report.min_ms, report.runs, report.gflops
        );
        println!(
            "  peak {:.1} GFLOP/s = {:.2} GHz x {} FMA/cycle x {} lanes x 2 x {} thread(s)  ->  {:.1} % of peak",
            report.peak_gflops,
            report.peak.clock_ghz,
            report.peak.fma_units,
            report.peak.lanes,
            report.threads,
            report.peak_fraction * 100.0
        );
        println!("  compile {:.0} ms", report.compile_ms);
    }
    Ok(0)
}
