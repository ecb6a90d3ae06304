//! `m4c bench gemm`: compiles a GEMM into a shared-library artifact, runs it
//! through the device crate repeatedly, and relates the median speed to the
//! measured FMA peak of the cores used and, for the few-row products of
//! decoding (matrix–vector), the rate B's weights stream at to the
//! measured memory read bandwidth.

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
    /// B's `4·k·n` bytes per GEMM over the median time, GB/s: what a
    /// decode step's weight-bound products are limited by (for at most
    /// [`MEMORY_BOUND_ROWS`] rows the caches are flushed of B before each
    /// timed run, so it streams from memory).
    pub weight_gbps: f64,
    /// Memory read bandwidth measured with the same threads
    /// ([`measure_read_bandwidth`], the better of a measurement before and
    /// one after the timed runs), GB/s; only for products of at most
    /// [`MEMORY_BOUND_ROWS`] rows, where it is the bound.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_gbps: Option<f64>,
}

/// Rows of A up to which a GEMM is weight-bandwidth-bound on every target
/// (each weight is used `m` times per load).
pub const MEMORY_BOUND_ROWS: usize = 8;

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
    // A weight-bound product streams its weights from memory in a decode
    // step (a model's weights exceed the caches): evict them before each
    // run, or a B that fits the last-level cache would be read from there.
    let evict: Vec<u64> = match m <= MEMORY_BOUND_ROWS {
        true => filled(EVICT_BYTES / 8, 0),
        false => Vec::new(),
    };
    let mut run = || -> Result<f64, CodegenError> {
        std::hint::black_box(sum_words(&evict));
        let start = Instant::now();
        kernel.run(&a, &mut c, &pool, &mut scratch)?;
        Ok(start.elapsed().as_secs_f64())
    };
    for _ in 0..3 {
        run()?;
    }
    // The bandwidth is measured before and after the runs and the better
    // taken: on a shared host it moves by ±20 % from minute to minute.
    let read_before = (m <= MEMORY_BOUND_ROWS).then(|| measure_read_bandwidth(threads));
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
    let weight_gbps = 4.0 * (k * n) as f64 / median / 1e9;
    let read_gbps = read_before.map(|before| before.max(measure_read_bandwidth(threads)));
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
        weight_gbps,
        read_gbps,
    })
}

/// Bytes each thread reads per pass of [`measure_read_bandwidth`]: far
/// beyond any last-level cache.
const BANDWIDTH_BYTES_PER_THREAD: usize = 256 << 20;

/// Bytes read between the timed runs of a weight-bound product to evict
/// its weights: four times a 32 MiB last-level cache.
const EVICT_BYTES: usize = 128 << 20;

/// `words` distinct words (so no page is shared or left untouched).
fn filled(words: usize, seed: u64) -> Vec<u64> {
    (0..words as u64).map(|i| i ^ seed).collect()
}

/// Sustained memory read bandwidth of `threads` threads, GB/s: each sums
/// its own 256 MiB buffer (written once first, so the pages exist); the
/// fastest of three passes counts (interference only slows a pass).
pub fn measure_read_bandwidth(threads: usize) -> f64 {
    let threads = threads.max(1);
    let words = BANDWIDTH_BYTES_PER_THREAD / 8;
    let buffers: Vec<Vec<u64>> = (0..threads).map(|t| filled(words, t as u64)).collect();
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let start = Instant::now();
        std::thread::scope(|scope| {
            for buffer in &buffers {
                scope.spawn(move || std::hint::black_box(sum_words(buffer)));
            }
        });
        best = best.min(start.elapsed().as_secs_f64());
    }
    (threads * words * 8) as f64 / best / 1e9
}

/// A sum of `words` bound by the loads: four streams read at once (a
/// quarter each, so the core keeps more misses in flight, as a GEMV
/// reading several weight columns does), eight independent lanes each.
fn sum_words(words: &[u64]) -> u64 {
    let quarter = words.len() / 4 / 8 * 8;
    let (streams, rest) = words.split_at(quarter * 4);
    let mut lanes = [0u64; 32];
    for i in (0..quarter).step_by(8) {
        for (s, stream_lanes) in lanes.chunks_exact_mut(8).enumerate() {
            let chunk = &streams[s * quarter + i..s * quarter + i + 8];
            for (lane, &w) in stream_lanes.iter_mut().zip(chunk) {
                *lane = lane.wrapping_add(w);
            }
        }
    }
    let tail = rest.iter().fold(0u64, |a, &b| a.wrapping_add(b));
    lanes.iter().fold(tail, |a, &b| a.wrapping_add(b))
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
