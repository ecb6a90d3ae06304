//! The GPU backend on a real device, in one short run (the device
//! check): each fixture named on the command line compiled, loaded through
//! the runtime's `gpu` device, compared with onnxruntime's outputs (rtol
//! 1e-3, atol 1e-4) and timed; then square f32 GEMMs timed kernel-only.
//! Built with `--no-default-features` (no PTX emitter) it links no LLVM
//! and runs where only a GPU driver is installed. With `--artifacts DIR`
//! it compiles nothing: it loads `DIR/NAME/` as written here by `m4c
//! compile FIXTURE --backend gpu:cuda -o DIR/NAME` (PTX text, plan,
//! weights) and runs it through the CUDA runner — the CUDA device check.
//!
//! `gpu_device_check [--artifacts DIR] FIXTURE_DIR [NAME...]`

use std::collections::HashSet;
use std::path::Path;
use std::time::Instant;

use m4c_compiler::backend::CodeGenerator;
use m4c_compiler::{lower, LowerOptions, OnnxModel};
use m4c_gpu_codegen::GpuBackend;
use m4c_gpu_device::wgpu_runner::{gpu, WgpuModule};
use m4c_gpu_device::Manifest;
use m4c_ir::{DType, Graph, Op, TensorType};
use m4c_runtime::bundle::format::{CodeEntry, SectionKind};
use m4c_runtime::bundle::ModuleCode;
use m4c_runtime::exec::{load_code, Signature};
use m4c_runtime::{read_npz, sanitized_key};

type Result<T> = std::result::Result<T, String>;

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let artifacts = match args.first().map(String::as_str) {
        Some("--artifacts") if args.len() > 1 => {
            let dir = args[1].clone();
            args.drain(..2);
            Some(dir)
        }
        _ => None,
    };
    let Some((dir, names)) = args.split_first() else {
        eprintln!("usage: gpu_device_check [--artifacts DIR] FIXTURE_DIR [NAME...]");
        std::process::exit(2);
    };
    if artifacts.is_none() {
        match gpu() {
            Ok(g) => println!("adapter: {}", g.adapter),
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(2);
            }
        }
    }
    let mut failed = 0;
    for name in names {
        let artifacts = artifacts.as_deref().map(|a| Path::new(a).join(name));
        match fixture(Path::new(dir), name, artifacts.as_deref()) {
            Ok(line) => println!("{name}: {line}"),
            Err(e) => {
                failed += 1;
                println!("{name}: FAIL {e}");
            }
        }
    }
    if artifacts.is_some() {
        std::process::exit(i32::from(failed > 0));
    }
    for n in [1024, 2048] {
        match gemm(n) {
            Ok(line) => println!("gemm {n}^3: {line}"),
            Err(e) => println!("gemm {n}^3: FAIL {e}"),
        }
    }
    std::process::exit(i32::from(failed > 0));
}

fn compile(g: &Graph) -> Result<m4c_compiler::backend::Artifact> {
    GpuBackend
        .compile(g, &Default::default())
        .map_err(|e| e.to_string())
}

/// A module's sections and their bytes.
type Sections = Vec<(SectionKind, Vec<u8>)>;

/// The sections of an artifact directory `m4c compile` wrote, and its
/// target (from the plan).
fn precompiled(dir: &Path) -> Result<(String, Sections)> {
    let mut sections = Vec::new();
    let mut target = String::new();
    for e in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let path = e.map_err(|e| e.to_string())?.path();
        let name = path.to_string_lossy().to_string();
        let bytes = std::fs::read(&path).map_err(|e| format!("{name}: {e}"))?;
        if name.ends_with(".plan.json") {
            let plan: Manifest = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
            target = plan.target;
            sections.push((SectionKind::CodePlan, bytes));
        } else if name.ends_with(".ptx") || name.ends_with(".wgsl") {
            sections.push((SectionKind::Code, bytes));
        } else if name.ends_with(".weights") {
            sections.push((SectionKind::CodeWeights, bytes));
        }
    }
    Ok((target, sections))
}

fn fixture(dir: &Path, name: &str, artifacts: Option<&Path>) -> Result<String> {
    let model = OnnxModel::load(&dir.join(format!("{name}.onnx"))).map_err(|e| e.to_string())?;
    let inputs = read_npz(&dir.join(format!("{name}.inputs.npz"))).map_err(|e| e.to_string())?;
    let expected =
        read_npz(&dir.join(format!("{name}.expected.npz"))).map_err(|e| e.to_string())?;
    let proto = model.graph();
    let inits: HashSet<&str> = proto.initializer.iter().map(|t| t.name.as_str()).collect();
    let mut opts = LowerOptions::default();
    let mut feeds = Vec::new();
    for input in proto
        .input
        .iter()
        .filter(|i| !inits.contains(i.name.as_str()))
    {
        let v = inputs
            .get(&input.name)
            .or_else(|| inputs.get(&sanitized_key(&input.name)))
            .ok_or(format!("no input {}", input.name))?;
        opts.input_shapes
            .insert(input.name.clone(), v.shape().to_vec());
        feeds.push(v.clone());
    }
    let graph = lower(&model, &opts).map_err(|e| e.to_string())?;
    let (target, sections, kernels) = match artifacts {
        Some(a) => {
            let (target, sections) = precompiled(a)?;
            (target, sections, "precompiled".to_string())
        }
        None => {
            let artifact = compile(&graph)?;
            let sections = artifact
                .files
                .iter()
                .filter_map(|f| Some((f.section?, f.bytes.clone())))
                .collect();
            let kernels = artifact.stats["kernels"].to_string();
            (artifact.target, sections, kernels)
        }
    };
    let entry = CodeEntry {
        cpu: String::new(),
        section: format!("{name}.{target}"),
        target,
    };
    let files: Vec<_> = sections.iter().map(|(k, b)| (*k, b.as_slice())).collect();
    let code = ModuleCode::from_memory("gpu", entry, &files)?;
    let module = load_code(name, &code, Signature::of(&graph), 1).map_err(|e| e.to_string())?;
    let got = module.run(&feeds).map_err(|e| e.to_string())?;
    let mut times = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        module.run(&feeds).map_err(|e| e.to_string())?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    for (o, got) in proto.output.iter().zip(&got) {
        let want = expected
            .get(&o.name)
            .or_else(|| expected.get(&sanitized_key(&o.name)))
            .ok_or(format!("no reference for {}", o.name))?;
        let c = m4c_ops::compare(got, want, 1e-3, 1e-4);
        if !c.passed() {
            return Err(format!("{}: {}", o.name, c.summary()));
        }
    }
    Ok(format!(
        "ok ({} outputs), {} kernels, median {:.3} ms per call (transfers included)",
        got.len(),
        kernels,
        times[times.len() / 2]
    ))
}

fn gemm(n: usize) -> Result<String> {
    let mut g = Graph::new("gemm");
    let ty = TensorType::fixed(DType::F32, &[n, n]);
    let a = g.add_input("a", ty.clone());
    let b = g.add_input("b", ty);
    let c = g
        .add_node(
            Op::MatMul {
                trans_a: false,
                trans_b: false,
            },
            &[a, b],
            "c",
        )
        .map_err(|e| e.to_string())?;
    g.outputs = vec![c];
    let artifact = compile(&g)?;
    let section = |k| artifact.section(k).ok_or(format!("no {k} section"));
    let manifest: Manifest =
        serde_json::from_slice(section(SectionKind::CodePlan)?).map_err(|e| e.to_string())?;
    let text = std::str::from_utf8(section(SectionKind::Code)?).map_err(|e| e.to_string())?;
    let module = WgpuModule::load(manifest, text, section(SectionKind::CodeWeights)?)
        .map_err(|e| e.to_string())?;
    let av: Vec<f32> = (0..n * n)
        .map(|i| ((i * 7 % 13) as f32 - 6.0) / 8.0)
        .collect();
    let bv: Vec<f32> = (0..n * n)
        .map(|i| ((i * 5 % 11) as f32 - 5.0) / 8.0)
        .collect();
    let bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let out = module
        .run(&[&bytes(&av), &bytes(&bv)])
        .map_err(|e| e.to_string())?;
    let cv: Vec<f32> = out[0]
        .chunks_exact(4)
        .map(|w| f32::from_le_bytes([w[0], w[1], w[2], w[3]]))
        .collect();
    for (i, j) in [(0, 0), (n - 1, n - 1), (n / 3, n / 2), (7, n - 5)] {
        let want: f64 = (0..n)
            .map(|k| f64::from(av[i * n + k]) * f64::from(bv[k * n + j]))
            .sum();
        let got = f64::from(cv[i * n + j]);
        if (got - want).abs() > 1e-3 * want.abs().max(1.0) {
            return Err(format!("c[{i},{j}] = {got}, expected {want}"));
        }
    }
    let reps = 20;
    module.time_kernels(2).map_err(|e| e.to_string())?;
    let t = module
        .time_kernels(reps)
        .map_err(|e| e.to_string())?
        .as_secs_f64()
        / reps as f64;
    let flops = 2.0 * (n as f64).powi(3);
    Ok(format!(
        "{:.3} ms, {:.1} GFLOP/s (checked at 4 elements)",
        t * 1e3,
        flops / t / 1e9
    ))
}
