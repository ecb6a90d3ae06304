//! The CPU backend behind the seam: [`CpuBackend`] implements the
//! compiler's `CodeGenerator` on top of [`write_graph_artifact`], and its
//! cost model is this host's measured roofline, cached per host.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use m4c_compiler::backend::{
    check_graph, Artifact, ArtifactFile, BackendError, Capabilities, CodeGenerator, CompileRequest,
};
use m4c_compiler::opt::{Roofline, Scheduler};
use m4c_cpu_device::Manifest;
use m4c_ir::{DType, Graph, Node, OpKind, Unit};
use m4c_runtime::bundle::format::SectionKind;

use crate::{
    build_graph_artifact, measure_peak, BuiltArtifact, CodegenError, CpuScheduler, Target,
};

/// The element types the CPU kernels compute on; f16, bf16 and int4
/// tensors are only moved (data-movement ops take any type).
const COMPUTE_DTYPES: [DType; 6] = [
    DType::F32,
    DType::I64,
    DType::I32,
    DType::I8,
    DType::U8,
    DType::Bool,
];

/// The CPU backend's code generator (LLVM through inkwell).
pub struct CpuBackend;

impl CodeGenerator for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn description(&self) -> &'static str {
        "machine code from LLVM for x86_64 (AVX2, AVX-512) and aarch64 (cross only)"
    }

    fn targets(&self) -> Vec<String> {
        ["host", "x86_64", "x86_64-avx512", "x86_64-avx2", "aarch64"]
            .map(String::from)
            .to_vec()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::every_op(&COMPUTE_DTYPES)
    }

    fn refuse(&self, g: &Graph, node: &Node) -> Option<String> {
        let kind = node.op.kind();
        if kind.unit() == Unit::DataMovement {
            return None;
        }
        let base = g.value(node.inputs[0]).ty.dtype;
        let out = g.value(node.output).ty.dtype;
        let reason = if kind == OpKind::Quantize && !matches!(out, DType::I8 | DType::U8) {
            Some(format!(
                "Quantize into {out} (the CPU kernels quantise into int8 and uint8; int4 is only stored)"
            ))
        } else if matches!(kind, OpKind::MaxPool | OpKind::AvgPool) && base != DType::F32 {
            Some(format!(
                "{} on {base} (the CPU pool kernels compute in f32 only)",
                kind.name()
            ))
        } else if kind == OpKind::Conv && base != DType::F32 {
            Some(format!(
                "Conv on {base} (the CPU kernels convolve f32, and ungrouped integer convolutions \
                 of int8/uint8 activations with constant weights whose centred values fit int8)"
            ))
        } else if kind == OpKind::MatMul && !matches!(base, DType::F32 | DType::I32) {
            Some(format!(
                "MatMul on {base} (the CPU kernels multiply f32, and i32: the int8 GEMM for \
                 int8/uint8 operands with constant weights, else a generic loop)"
            ))
        } else if kind == OpKind::Pow && base != DType::F32 {
            Some(format!(
                "Pow on {base} bases (the CPU kernels compute Pow in f32 only)"
            ))
        } else {
            self.capabilities().refuse(g, node)
        };
        // Nodes a quantised kernel computes (the dequantisation of int4
        // weights, the i32 MatMul of the int8 GEMM) need no kernel of their
        // own.
        reason.filter(|_| {
            let index = g.nodes.iter().position(|n| std::ptr::eq(n, node));
            index.is_none_or(|i| crate::quant::lower::find(g).absorbed_by[i].is_none())
        })
    }

    fn runnable(&self, target: Option<&str>) -> Result<(), String> {
        Target::parse(target, None)
            .and_then(|t| t.check_runs_on_host())
            .map_err(|e| e.to_string())
    }

    fn compile(&self, graph: &Graph, request: &CompileRequest) -> Result<Artifact, BackendError> {
        let target =
            Target::parse(request.target.as_deref(), request.tuning.as_deref()).map_err(|e| {
                BackendError::Target {
                    backend: "cpu",
                    msg: e.to_string(),
                }
            })?;
        check_graph(self, graph)?;
        let started = Instant::now();
        compile_files(graph, &target, started).map_err(|e| BackendError::Compile {
            backend: "cpu",
            msg: e.to_string(),
        })
    }

    fn scheduler(&self) -> Option<Arc<dyn Scheduler>> {
        let target = Target::parse(None, None).ok()?;
        Some(Arc::new(CpuScheduler { target }))
    }

    fn cost_model(&self) -> Roofline {
        cached_roofline().unwrap_or_else(|why| {
            let mut nominal = Roofline::cpu();
            nominal.source = format!("nominal (not measured: {why})");
            nominal
        })
    }
}

/// Builds the artifact in memory and takes its files (only the linker
/// works on files, in a scratch directory).
fn compile_files(
    graph: &Graph,
    target: &Target,
    started: Instant,
) -> Result<Artifact, CodegenError> {
    let BuiltArtifact {
        manifest,
        object,
        weights,
        library,
    } = build_graph_artifact(graph, target)?;
    let plan = serde_json::to_vec(&manifest).map_err(|e| CodegenError::Graph {
        graph: graph.name.clone(),
        reason: format!("plan: {e}"),
    })?;
    let stats = stats(&manifest, weights.len(), started);
    let mut files = vec![
        file(&manifest.object, None, object),
        file("plan.json", Some(SectionKind::CodePlan), plan),
        file(&manifest.weights, Some(SectionKind::CodeWeights), weights),
    ];
    if let (Some(name), Some(bytes)) = (&manifest.library, library) {
        files.push(file(name, Some(SectionKind::Code), bytes));
    }
    Ok(Artifact {
        backend: "cpu".into(),
        target: manifest.target.clone(),
        tuning: manifest.cpu.clone(),
        runnable: manifest.library.is_some(),
        files,
        stats,
    })
}

fn file(name: &str, section: Option<SectionKind>, bytes: Vec<u8>) -> ArtifactFile {
    ArtifactFile {
        name: name.to_string(),
        section,
        bytes,
    }
}

/// The figures `compile` and `bench` print.
fn stats(manifest: &Manifest, weight_bytes: usize, started: Instant) -> serde_json::Value {
    let plan = manifest.graph.as_ref();
    serde_json::json!({
        "compile_ms": started.elapsed().as_secs_f64() * 1e3,
        "kernels": plan.map_or(0, |p| p.steps.len()),
        "gemms": manifest.gemms.len(),
        "arena_bytes": plan.map_or(0, |p| p.arena_bytes),
        "naive_arena_bytes": plan.map_or(0, |p| p.naive_arena_bytes),
        "weight_bytes": weight_bytes,
    })
}

/// This host's roofline: read from the cache, or measured once (about
/// 0.2 s: the FMA peak probe and a streaming copy) and cached, so that
/// every decision made with it is reproducible on this host whatever the
/// machine's load. The cache key is the CPU model and the host ISA; delete
/// the file (its path is in the roofline's `source`) to measure again.
fn cached_roofline() -> Result<Roofline, String> {
    let target = Target::parse(None, None).map_err(|e| e.to_string())?;
    let key = format!("{}|{}|{}", cpu_model(), target.name(), target.cpu);
    let path = cache_dir().map(|d| {
        d.join(format!(
            "cpu-roofline-{}.json",
            &blake3::hash(key.as_bytes()).to_hex()[..16]
        ))
    });
    if let Some(cached) = path.as_ref().and_then(|p| read_cached(p)) {
        return Ok(cached);
    }
    let peak = measure_peak(&target).map_err(|e| e.to_string())?;
    let mut roofline = Roofline {
        name: "cpu".into(),
        peak_flops: peak.peak_gflops * 1e9,
        vector_flops: peak.clock_ghz * 1e9 * peak.fma_units * peak.lanes as f64,
        bandwidth: copy_bandwidth(),
        launch_ns: Roofline::cpu().launch_ns,
        source: format!(
            "measured once on this host: {:.2} GHz x {} FMA/cycle x {} lanes, copy bandwidth; launch nominal",
            peak.clock_ghz, peak.fma_units, peak.lanes
        ),
    };
    if let Some(path) = &path {
        if write_cached(path, &roofline).is_ok() {
            roofline.source = format!("{} (cached in {})", roofline.source, path.display());
        }
    }
    Ok(roofline)
}

/// `$M4C_CACHE_DIR`, else `$XDG_CACHE_HOME/m4c`, else `~/.cache/m4c`.
fn cache_dir() -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("M4C_CACHE_DIR")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("m4c")))
        .or_else(|| env("HOME").map(|d| d.join(".cache").join("m4c")))
}

fn read_cached(path: &std::path::Path) -> Option<Roofline> {
    let bytes = std::fs::read(path).ok()?;
    let r: Roofline = serde_json::from_slice(&bytes).ok()?;
    let sane = [r.peak_flops, r.vector_flops, r.bandwidth, r.launch_ns]
        .iter()
        .all(|x| x.is_finite() && *x > 0.0);
    sane.then(|| Roofline {
        source: format!("{} (cached in {})", r.source, path.display()),
        ..r
    })
}

/// Writes the cache file through a temporary file renamed into place.
fn write_cached(path: &std::path::Path, roofline: &Roofline) -> std::io::Result<()> {
    let dir = path.parent().ok_or(std::io::ErrorKind::NotFound)?;
    std::fs::create_dir_all(dir)?;
    let tmp = tempfile::NamedTempFile::new_in(dir)?;
    serde_json::to_writer_pretty(tmp.as_file(), roofline)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// The CPU's model name (`/proc/cpuinfo`), part of the cache key.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// Bytes per second read plus written by the fastest of five copies of a
/// 64 MiB buffer (larger than the last-level caches of the machines this
/// runs on).
fn copy_bandwidth() -> f64 {
    let n = 16 << 20;
    let src = vec![1.0f32; n];
    let mut dst = vec![0.0f32; n];
    let fastest = (0..5)
        .map(|_| {
            let t = Instant::now();
            dst.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&mut dst);
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    (2 * n * 4) as f64 / fastest
}
