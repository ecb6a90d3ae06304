//! The NPU backend end to end: fixtures through `m4c run --backend npu`
//! against onnxruntime's fp32 outputs, a GEMM-only graph against
//! `m4c npu gemm`, fallback for ops the NPU cannot take (compiled by the
//! CPU backend, or on the interpreter where it refuses), `--strict`, and
//! the bench report of a tiny model.

mod common;
#[path = "common/npu.rs"]
mod npu;
use common::{fixture, m4c, text};
use npu::{compile, compile_with, load_artifact, simulate};
use std::process::Output;

use m4c_compiler::backend::{Artifact, BackendError, Capabilities, CodeGenerator, CompileRequest};
use m4c_compiler::opt::Roofline;
use m4c_ir::{DType, Graph, Op, Tensor, TensorType};
use m4c_ops::Value;
use m4c_runtime::bundle::format::SectionKind;
use m4c_runtime::exec::npu::{NpuModule, PartEngine};

/// Runs fixture `name` on the NPU with `--min-cosine 0.99`.
fn run_fixture(name: &str, backend: &str) -> Output {
    let f = |ext: &str| fixture(&format!("{name}.{ext}")).display().to_string();
    m4c(&[
        "run",
        &f("onnx"),
        "--inputs",
        &f("inputs.npz"),
        "--expect",
        &f("expected.npz"),
        "--backend",
        backend,
        "--min-cosine",
        "0.99",
    ])
}

#[test]
fn transformer_encoders_match_onnxruntime_within_cosine_099() {
    // (fixture, backend, whether it has fallback parts: all compiled by
    // the CPU backend, none on the interpreter)
    for (name, backend, fallback) in [
        ("clip_text", "npu", true),
        ("distilbert", "npu:phone-flagship", true),
        ("imu_encoder", "npu", true),
        ("mlp_external_data", "npu", false),
    ] {
        let out = run_fixture(name, backend);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(0), "{name}:\n{t}");
        assert_eq!(t.matches("note: calibrating").count(), 1, "{t}");
        let engines = t
            .lines()
            .find(|l| l.contains("CPU-fallback part(s) compiled"))
            .unwrap_or_else(|| panic!("{name}: no engine note: {t}"));
        assert!(engines.ends_with(", 0 on the interpreter"), "{engines}");
        let compiled = !engines.contains(" 0 CPU-fallback part(s)");
        assert_eq!(compiled, fallback, "{name}: {engines}");
        assert!(!t.contains("FAIL"), "{t}");
    }
}

/// Decoders with a KV cache, LoRA and a padded attention mask (written
/// with `-1e9`, which calibration finds by what the softmax makes of it):
/// the backbone's logits and the new cache within cosine 0.99.
#[test]
fn decoders_with_a_kv_cache_match_onnxruntime_within_cosine_099() {
    for name in ["decoder_past", "decoder_past_lora", "llama_decode"] {
        let out = run_fixture(name, "npu");
        let t = text(&out);
        assert_eq!(out.status.code(), Some(0), "{name}:\n{t}");
        assert!(t.contains("logits"), "{t}");
        assert!(!t.contains("FAIL"), "{t}");
    }
}

/// [`compile_with`] then [`load_artifact`].
fn load(
    g: &Graph,
    inputs: &[Value],
    target: &str,
    cpu: Option<&dyn CodeGenerator>,
) -> Result<NpuModule, String> {
    load_artifact(g, &compile_with(g, inputs, target, cpu), target)
}

fn ramp(shape: &[usize], f: impl Fn(usize) -> f32) -> Value {
    let n = shape.iter().product();
    Value::F32(ndarray::ArrayD::from_shape_vec(shape.to_vec(), (0..n).map(f).collect()).unwrap())
}

/// A GEMM-only graph simulated whole takes the cycles `m4c npu gemm`
/// reports for the same shape (per-channel weights on both sides).
#[test]
fn a_gemm_only_graph_takes_the_cycles_of_npu_gemm() {
    let (m, k, n) = (64, 96, 80);
    let mut g = Graph::new("gemm");
    let x = g.add_input("x", TensorType::fixed(DType::F32, &[m, k]));
    let w: Vec<f32> = (0..k * n)
        .map(|i| ((i * 7919 % 255) as f32 - 127.0) / 300.0)
        .collect();
    let w = g.add_const("w", Tensor::from_f32(&[k, n], &w));
    let y = g
        .add_node(
            Op::MatMul {
                trans_a: false,
                trans_b: false,
            },
            &[x, w],
            "y",
        )
        .unwrap();
    g.outputs.push(y);
    let input = ramp(&[m, k], |i| ((i * 31 % 97) as f32 - 48.0) / 20.0);
    let (outputs, figures) = simulate(&g, std::slice::from_ref(&input), "edge-small");
    assert_eq!(figures.layers.len(), 1);
    assert_eq!(figures.fallback_parts, 0);
    let want = m4c_ops::run_graph(&g, &[input]).unwrap();
    let c = m4c_ops::compare(&outputs[0], &want[0], 0.0, 0.0);
    assert!(c.cosine > 0.999, "{}", c.summary());
    let out = m4c(&[
        "npu",
        "gemm",
        "--m",
        "64",
        "--k",
        "96",
        "--n",
        "80",
        "--config",
        "edge-small",
        "--per-channel",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cycles = report["stats"]["cycles"]
        .as_u64()
        .or(report["cycles"].as_u64());
    assert_eq!(cycles, Some(figures.layers[0].cycles), "{report}");
}

/// A graph with ArgMax and Where (the NPU refuses both) and its inputs.
fn argmax_where() -> (Graph, [Value; 2]) {
    let mut g = Graph::new("fallback");
    let x = g.add_input("x", TensorType::fixed(DType::F32, &[4, 16]));
    let t = g.add_node(Op::Tanh, &[x], "t").unwrap();
    let a = g
        .add_node(
            Op::ArgMax {
                axis: 1,
                keep_dims: false,
                select_last: false,
            },
            &[t],
            "a",
        )
        .unwrap();
    let s = g.add_node(Op::Sigmoid, &[x], "s").unwrap();
    let c = g.add_input("c", TensorType::fixed(DType::Bool, &[4, 16]));
    let b = g.add_node(Op::Where, &[c, s, t], "b").unwrap();
    g.outputs.extend([a, b]);
    let input = ramp(&[4, 16], |i| (i as f32 - 30.0) / 8.0);
    let cond = Value::Bool(ndarray::ArrayD::from_shape_fn(vec![4, 16], |i| {
        (i[0] + i[1]) % 3 == 0
    }));
    (g, [input, cond])
}

/// Checks the outputs of [`argmax_where`] against the interpreter's.
fn check_argmax_where(g: &Graph, inputs: &[Value], outputs: &[Value]) {
    let want = m4c_ops::run_graph(g, inputs).unwrap();
    assert_eq!(outputs[0].shape(), want[0].shape());
    let c = m4c_ops::compare(&outputs[1], &want[1], 0.0, 0.0);
    assert!(c.cosine > 0.999, "{}", c.summary());
}

/// Ops the NPU cannot take (ArgMax, Where) fall back and run as the CPU
/// backend's compiled code; the result is the interpreter's, and nothing
/// panics.
#[test]
fn an_op_the_npu_cannot_take_falls_back_to_compiled_cpu_code() {
    let (g, inputs) = argmax_where();
    let (outputs, figures) = simulate(&g, &inputs, "edge-small");
    assert_eq!(figures.fallback_parts, 2, "{figures:?}");
    assert_eq!(figures.fallback_compiled, 2, "{figures:?}");
    assert_eq!(figures.layers.len(), 2);
    let engines: Vec<PartEngine> = figures.parts.iter().map(|p| p.engine).collect();
    assert_eq!(
        engines
            .iter()
            .filter(|&&e| e == PartEngine::CompiledCpu)
            .count(),
        2,
        "{engines:?}"
    );
    assert!(figures.fallback_seconds > 0.0);
    check_argmax_where(&g, &inputs, &outputs);
    let why = m4c_npu_codegen::constraints::refuse(&g, &g.nodes[1]).unwrap();
    assert_eq!(why, "op: no NPU kernel for ArgMax");
}

/// A code generator that refuses everything: the fallback of a part the
/// CPU backend cannot compile.
struct RefusesAll;

impl CodeGenerator for RefusesAll {
    fn name(&self) -> &'static str {
        "refuses-all"
    }
    fn description(&self) -> &'static str {
        "test: compiles nothing"
    }
    fn targets(&self) -> Vec<String> {
        vec![]
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            ops: vec![],
            dtypes: vec![],
        }
    }
    fn runnable(&self, _: Option<&str>) -> Result<(), String> {
        Ok(())
    }
    fn compile(&self, _: &Graph, _: &CompileRequest) -> Result<Artifact, BackendError> {
        unreachable!("every node is refused first")
    }
    fn cost_model(&self) -> Roofline {
        Roofline::cpu()
    }
}

/// Where the fallback code generator refuses a part (or none is given),
/// the part runs on the interpreter and the figures say why.
#[test]
fn a_part_the_cpu_backend_refuses_runs_on_the_interpreter_and_says_why() {
    let (g, inputs) = argmax_where();
    for (cpu, why) in [
        (
            Some(&RefusesAll as &dyn CodeGenerator),
            "backend `refuses-all` refuses",
        ),
        (None, "no fallback code generator was given"),
    ] {
        let module = load(&g, &inputs, "edge-small", cpu).unwrap();
        let (outputs, figures) = module.run_measured(&inputs, 3).unwrap();
        assert_eq!(figures.fallback_parts, 2);
        assert_eq!(figures.fallback_compiled, 0);
        for p in figures.parts.iter().filter(|p| p.engine != PartEngine::Npu) {
            assert_eq!(p.engine, PartEngine::Interpreter);
            let note = p.note.as_deref().unwrap_or_default();
            assert!(note.contains(why), "{note}");
        }
        check_argmax_where(&g, &inputs, &outputs);
    }
}

/// A fallback library whose bytes were changed after compilation is
/// refused before anything is loaded (its checksum is in the plan).
#[test]
fn a_changed_fallback_library_is_refused() {
    let (g, inputs) = argmax_where();
    let mut artifact = compile(&g, &inputs, "edge-small");
    let plan: serde_json::Value =
        serde_json::from_slice(artifact.section(SectionKind::CodePlan).unwrap()).unwrap();
    let library = plan["parts"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|p| p["cpu"]["library"]["offset"].as_u64())
        .unwrap() as usize;
    let file = artifact
        .files
        .iter_mut()
        .find(|f| f.section == Some(SectionKind::CodeWeights))
        .unwrap();
    file.bytes[library + 100] ^= 0x40;
    let err = load_artifact(&g, &artifact, "edge-small").err().unwrap();
    assert!(err.contains("checksum"), "{err}");
}

/// `--strict` refuses a model with fallback (exit 2), naming each node
/// and the constraint it violates; a model wholly on the NPU runs.
#[test]
fn strict_refuses_any_fallback_and_lists_it() {
    let f = |name: &str, ext: &str| fixture(&format!("{name}.{ext}")).display().to_string();
    let strict = |name: &str, cmd: &str| {
        m4c(&[
            cmd,
            &f(name, "onnx"),
            "--inputs",
            &f(name, "inputs.npz"),
            "--backend",
            "npu",
            "--strict",
        ])
    };
    for cmd in ["run", "bench"] {
        let out = strict("clip_text", cmd);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{t}");
        assert!(
            t.contains("--strict:") && t.contains("would fall back"),
            "{t}"
        );
        assert!(t.contains("Where `"), "{t}");
        assert!(t.contains(": op: no NPU kernel for Where"), "{t}");
        let out = strict("mlp_external_data", cmd);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    let out = m4c(&[
        "run",
        &f("mlp_external_data", "onnx"),
        "--inputs",
        &f("mlp_external_data", "inputs.npz"),
        "--strict",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("--strict applies to --backend npu"));
}

/// `bench --backend npu --json` names each part's engine: every one of
/// clip_text's fallback parts ran as compiled CPU code, timed on it.
#[test]
fn bench_json_names_the_engine_of_every_part() {
    let out = m4c(&[
        "bench",
        &fixture("clip_text.onnx").display().to_string(),
        "--inputs",
        &fixture("clip_text.inputs.npz").display().to_string(),
        "--backend",
        "npu",
        "--runs",
        "3",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let parts = r["parts"].as_array().unwrap();
    let engines: Vec<&str> = parts
        .iter()
        .map(|p| p["engine"].as_str().unwrap())
        .collect();
    let count = |e: &str| engines.iter().filter(|&&x| x == e).count();
    assert!(count("npu") > 0 && count("compiled_cpu") > 0, "{engines:?}");
    assert_eq!(
        count("npu") + count("compiled_cpu"),
        parts.len(),
        "{engines:?}"
    );
    assert_eq!(r["fallback_compiled"], count("compiled_cpu"));
    assert_eq!(r["fallback_parts"], count("compiled_cpu"));
    assert!(r["fallback_ms"].as_f64().unwrap() > 0.0);
}

/// The bench summary and per-layer table of a tiny model (simulated
/// figures are deterministic).
#[test]
fn bench_summary_and_layer_table_of_a_tiny_model() {
    let dir = std::env::temp_dir().join(format!("m4c-npu-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let csv = dir.join("layers.csv");
    let out = m4c(&[
        "bench",
        &fixture("mlp_external_data.onnx").display().to_string(),
        "--inputs",
        &fixture("mlp_external_data.inputs.npz")
            .display()
            .to_string(),
        "--backend",
        "npu:edge-small",
        "--csv",
        &csv.display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let table = std::fs::read_to_string(&csv).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let summary = String::from_utf8_lossy(&out.stdout).to_string();
    insta::assert_snapshot!(format!("{summary}\n{table}"));
    let json = m4c(&[
        "bench",
        &fixture("mlp_external_data.onnx").display().to_string(),
        "--inputs",
        &fixture("mlp_external_data.inputs.npz")
            .display()
            .to_string(),
        "--backend",
        "npu",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert!(report["cycles"].as_u64().unwrap() > 0);
    assert!(report["latency_ms"].as_f64().unwrap() > 0.0);
    let layers = report["layers"].as_array().unwrap();
    assert!(!layers.is_empty());
    // Every layer of the MLP completes a value: each has an SQNR.
    assert!(layers.iter().all(|l| l["sqnr_db"].as_f64().is_some()));
}
