//! `m4c bench gemm`: compiles a GEMM into a shared-library artifact, runs it
//! through the device crate repeatedly, and relates the median speed to the
//! measured FMA peak of the cores used.

use std::time::{Duration, Instant};

use m4c_cpu_device::{KernelLibrary, ThreadPool};
use serde::Serialize;

use crate::gemm::GemmSpec;
use crate::{measure_peak, ArtifactBuilder, CodegenError, Peak, Target};

/// What to benchmark.
#[derive(Clone, Debug)]
pub struct GemmBenchConfig {
    /// Code-generation target (must run on this host).
    pub target: Target,
    /// Rows of A and C.
    pub m: usize,
    /// Reduction length.
    pub k: usize,
    /// Columns of B and C.
    pub n: usize,
    /// Threads the B panels are split over.
    pub threads: usize,
    /// Timed runs at least; more are made until `min_time` has passed.
    pub min_runs: usize,
    /// Timed runs go on at least this long (capped at 10 000 runs).
    pub min_time: Duration,
}

/// The result, with the keys `m4c bench gemm --json` prints.
#[derive(Clone, Debug, Serialize)]
pub struct GemmBenchReport {
    pub target: String,
    pub cpu: String,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub threads: usize,
    /// Timed runs.
    pub runs: usize,
    /// Median wall time of one GEMM, milliseconds.
    pub median_ms: f64,
    /// Fastest run, milliseconds.
    pub min_ms: f64,
    /// `2·m·k·n / median`, GFLOP/s.
    pub gflops: f64,
    /// FP32 FMA peak of the cores used: per-core peak × threads.
    pub peak_gflops: f64,
    /// `gflops / peak_gflops`.
    pub peak_fraction: f64,
    /// Time to generate, optimise, emit and link the kernel, milliseconds.
    pub compile_ms: f64,
    /// How the per-core peak was obtained.
    pub peak: Peak,
}

/// Runs the benchmark.
pub fn bench_gemm(config: &GemmBenchConfig) -> Result<GemmBenchReport, CodegenError> {
    let GemmBenchConfig {
        m, k, n, threads, ..
    } = *config;
    config.target.check_runs_on_host()?;
    let b = pseudo_random(k * n, 2);
    let a = pseudo_random(m * k, 1);
    let dir = tempfile::tempdir().map_err(|source| CodegenError::Io {
        path: std::env::temp_dir(),
        source,
    })?;
    let compile_start = Instant::now();
    let mut builder = ArtifactBuilder::new(&config.target);
    builder.add_gemm(GemmSpec::new("bench_gemm", m, k, n), &b)?;
    builder.write(dir.path())?;
    let compile_ms = compile_start.elapsed().as_secs_f64() * 1e3;

    let library = KernelLibrary::open(dir.path())?;
    let kernel = library.gemm("bench_gemm")?;
    let pool = ThreadPool::new(threads)?;
    let mut scratch = kernel.scratch_for(&pool);
    let mut c = vec![0.0f32; m * n];
    let mut run = || -> Result<f64, CodegenError> {
        let start = Instant::now();
        kernel.run(&a, &mut c, &pool, &mut scratch)?;
        Ok(start.elapsed().as_secs_f64())
    };
    for _ in 0..3 {
        run()?;
    }
    let mut times = Vec::new();
    let started = Instant::now();
    while times.len() < config.min_runs
        || (started.elapsed() < config.min_time && times.len() < 10_000)
    {
        times.push(run()?);
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let peak = measure_peak(&config.target)?;
    let gflops = 2.0 * (m * k * n) as f64 / median / 1e9;
    let peak_gflops = peak.peak_gflops * threads as f64;
    Ok(GemmBenchReport {
        target: config.target.name().to_string(),
        cpu: config.target.cpu.clone(),
        m,
        k,
        n,
        threads,
        runs: times.len(),
        median_ms: median * 1e3,
        min_ms: times[0] * 1e3,
        gflops,
        peak_gflops,
        peak_fraction: gflops / peak_gflops,
        compile_ms,
        peak,
    })
}

/// Deterministic values in [-1, 1): the benchmark's inputs (their values do
/// not affect the timing).
fn pseudo_random(len: usize, seed: u32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}
