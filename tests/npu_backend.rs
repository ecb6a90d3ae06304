//! The NPU backend end to end: fixtures through `m4c run --backend npu`
//! against onnxruntime's fp32 outputs, a GEMM-only graph against
//! `m4c npu gemm`, fallback for ops the NPU cannot take, and the bench
//! report of a tiny model.

mod common;
use common::{fixture, m4c, text};
use std::process::Output;

use m4c_compiler::backend::CompileRequest;
use m4c_ir::{DType, Graph, Op, Tensor, TensorType};
use m4c_ops::Value;
use m4c_runtime::bundle::format::CodeEntry;
use m4c_runtime::bundle::ModuleCode;
use m4c_runtime::exec::npu::{NpuModule, RunFigures};
use m4c_runtime::exec::Signature;

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
    for (name, backend) in [
        ("clip_text", "npu"),
        ("distilbert", "npu:phone-flagship"),
        ("mlp_external_data", "npu"),
    ] {
        let out = run_fixture(name, backend);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(0), "{name}:\n{t}");
        assert_eq!(t.matches("note: calibrating").count(), 1, "{t}");
        assert!(!t.contains("FAIL"), "{t}");
    }
}

/// Compiles `g` calibrated on `inputs` and runs it once on them.
fn simulate(g: &Graph, inputs: &[Value], target: &str) -> (Vec<Value>, RunFigures) {
    let cal = m4c_npu_codegen::calibrate::calibrate(g, &[inputs.to_vec()]).unwrap();
    let request = CompileRequest {
        target: Some(target.into()),
        ..Default::default()
    };
    let artifact = m4c_npu_codegen::compile_calibrated(g, &cal, &request).unwrap();
    let entry = CodeEntry {
        cpu: String::new(),
        section: format!("{}.{target}", g.name),
        target: target.into(),
    };
    let files: Vec<_> = artifact
        .files
        .iter()
        .filter_map(|f| f.section.map(|k| (k, f.bytes.as_slice())))
        .collect();
    let code = ModuleCode::from_memory("npu", entry, &files).unwrap();
    let module = NpuModule::from_sections(&g.name, &code, Signature::of(g)).unwrap();
    module.run_measured(inputs).unwrap()
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

/// An op the NPU cannot take (ArgMax) falls back to the interpreter; the
/// result is the interpreter's, and nothing panics.
#[test]
fn an_op_the_npu_cannot_take_falls_back() {
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
    let inputs = [input, cond];
    let (outputs, figures) = simulate(&g, &inputs, "edge-small");
    assert_eq!(figures.fallback_parts, 2, "{figures:?}");
    assert_eq!(figures.layers.len(), 2);
    let want = m4c_ops::run_graph(&g, &inputs).unwrap();
    assert_eq!(outputs[0].shape(), want[0].shape());
    let c = m4c_ops::compare(&outputs[1], &want[1], 0.0, 0.0);
    assert!(c.cosine > 0.999, "{}", c.summary());
    let why = m4c_npu_codegen::constraints::refuse(&g, &g.nodes[1]).unwrap();
    assert_eq!(why, "op: no NPU kernel for ArgMax");
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
    assert!(!report["layers"].as_array().unwrap().is_empty());
}
