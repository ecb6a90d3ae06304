//! The NPU bench report's additions: per-layer quantisation SQNR
//! (checked against the NPU run's output and onnxruntime's fp32 output),
//! ONNX node names, placement and CPU-fallback rows in the layer table,
//! and the `--trace` Chrome/Perfetto trace (tracks, order, durations =
//! simulated cycles at the clock or measured host time).

mod common;
#[path = "common/npu.rs"]
mod npu;
use common::{fixture, m4c, text};
use npu::{compile, load_artifact, simulate};

use m4c_ir::{DType, Graph, Op, Tensor, TensorType};
use m4c_ops::Value;
use serde_json::Value as Json;

/// A scratch directory of this test process.
fn scratch(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("m4c-npu-report-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `m4c bench FIXTURE --backend npu --json` plus `extra` flags: the
/// report.
fn bench(name: &str, extra: &[&str]) -> Json {
    let f = |ext: &str| fixture(&format!("{name}.{ext}")).display().to_string();
    let mut args = vec![
        "bench".to_string(),
        f("onnx"),
        "--inputs".into(),
        f("inputs.npz"),
        "--backend".into(),
        "npu:edge-small".into(),
        "--runs".into(),
        "1".into(),
        "--json".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = m4c(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// SQNR in dB of `got` against `want` (the formula the report documents).
fn sqnr(got: &[f32], want: &[f32]) -> f64 {
    let signal: f64 = want.iter().map(|&r| f64::from(r).powi(2)).sum();
    let noise: f64 = got
        .iter()
        .zip(want)
        .map(|(&a, &r)| (f64::from(a) - f64::from(r)).powi(2))
        .sum();
    10.0 * (signal / noise).log10()
}

fn f32s(v: &Value) -> Vec<f32> {
    let Value::F32(a) = v else {
        panic!("not f32: {}", v.dtype())
    };
    a.iter().copied().collect()
}

/// The tiny MLP's layers all have an SQNR, well above 20 dB; the last
/// layer's equals the SQNR of `m4c run --backend npu`'s output against
/// onnxruntime's fp32 output (an independent reference: the report's is
/// the m4c interpreter's); the CSV carries the same figures, and the
/// ONNX node names.
#[test]
fn layer_sqnr_of_the_tiny_mlp_matches_its_output_against_onnxruntime() {
    let dir = scratch("mlp");
    let csv = dir.join("layers.csv");
    let r = bench("mlp_external_data", &["--csv", &csv.display().to_string()]);
    let layers = r["layers"].as_array().unwrap();
    // Two GEMMs, the Relu between them applied in the first one's output
    // stage.
    assert_eq!(layers.len(), 2);
    assert_eq!(layers[0]["kernel"], "gemm+lut");
    for l in layers {
        let db = l["sqnr_db"].as_f64().unwrap_or_else(|| panic!("{l}"));
        assert!(db.is_finite() && db > 20.0, "{l}");
    }
    let last = layers.last().unwrap();
    assert_eq!(last["name"], "logits");
    assert_eq!(last["onnx_node"], "/2/Gemm");

    let out_npz = dir.join("out.npz");
    let f = |ext: &str| {
        fixture(&format!("mlp_external_data.{ext}"))
            .display()
            .to_string()
    };
    let out = m4c(&[
        "run",
        &f("onnx"),
        "--inputs",
        &f("inputs.npz"),
        "--backend",
        "npu:edge-small",
        "-o",
        &out_npz.display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let got = m4c_runtime::read_npz(&out_npz).unwrap();
    let want = m4c_runtime::read_npz(&fixture("mlp_external_data.expected.npz")).unwrap();
    let db = sqnr(&f32s(&got["logits"]), &f32s(&want["logits"]));
    let reported = last["sqnr_db"].as_f64().unwrap();
    assert!((db - reported).abs() < 0.01, "{db} vs {reported}");

    let table = std::fs::read_to_string(&csv).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let mut rows = table.lines();
    let header: Vec<&str> = rows.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|&h| h == name).unwrap();
    let rows: Vec<Vec<&str>> = rows.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 2);
    for (row, l) in rows.iter().zip(layers) {
        assert_eq!(row[col("placement")], "npu");
        assert_eq!(row[col("host_ms")], "");
        // Each layer's tiling, as the JSON gives it.
        let tile_rows: usize = row[col("tile_rows")].parse().unwrap();
        assert_eq!(tile_rows, l["tile_rows"].as_u64().unwrap() as usize);
        assert!(tile_rows >= 1, "{row:?}");
        let csv_db: f64 = row[col("sqnr_db")].parse().unwrap();
        assert!((csv_db - l["sqnr_db"].as_f64().unwrap()).abs() <= 0.005);
        let node = l["onnx_node"].as_str().unwrap();
        assert_eq!(row[col("onnx_node")], format!("\"{node}\""));
    }
}

/// A two-layer graph: x·w then tanh.
fn matmul_tanh() -> (Graph, Value) {
    let (m, k, n) = (8, 32, 16);
    let mut g = Graph::new("mt");
    let x = g.add_input("x", TensorType::fixed(DType::F32, &[m, k]));
    let w: Vec<f32> = (0..k * n)
        .map(|i| ((i * 7919 % 255) as f32 - 127.0) / 300.0)
        .collect();
    let w = g.add_const("w", Tensor::from_f32(&[k, n], &w));
    let mm = Op::MatMul {
        trans_a: false,
        trans_b: false,
    };
    let y = g.add_node(mm, &[x, w], "y").unwrap();
    let t = g.add_node(Op::Tanh, &[y], "t").unwrap();
    g.outputs.push(t);
    let data = (0..m * k).map(|i| ((i * 31 % 97) as f32 - 48.0) / 20.0);
    let input = ndarray::ArrayD::from_shape_vec(vec![m, k], data.collect()).unwrap();
    (g, Value::F32(input))
}

/// `run_capturing` runs as `run_measured` does (same outputs, same
/// cycles) and keeps one result per layer, aligned with the figures:
/// the last layer's is exactly the module's (dequantised) output, and
/// against the interpreter its SQNR is finite and above 20 dB, while a
/// result corrupted by one int8 step per element scores lower.
#[test]
fn captured_layer_results_are_the_module_outputs_and_sqnr_sees_corruption() {
    let (g, input) = matmul_tanh();
    let inputs = std::slice::from_ref(&input);
    let module = load_artifact(&g, &compile(&g, inputs, "edge-small"), "edge-small").unwrap();
    let (outputs, figures, captured) = module.run_capturing(inputs, 1).unwrap();
    assert_eq!(captured.len(), figures.layers.len());
    let (plain, plain_figures) = simulate(&g, inputs, "edge-small");
    assert_eq!(f32s(&plain[0]), f32s(&outputs[0]));
    let cycles = |f: &m4c_runtime::exec::npu::RunFigures| -> Vec<u64> {
        f.layers.iter().map(|l| l.cycles).collect()
    };
    assert_eq!(cycles(&plain_figures), cycles(&figures));
    let last = captured.last().unwrap().as_ref().unwrap();
    assert_eq!(last.name, "t");
    assert_eq!(last.values, f32s(&outputs[0]));
    let want = f32s(&m4c_ops::run_graph(&g, inputs).unwrap()[0]);
    let clean = sqnr(&last.values, &want);
    assert!(clean.is_finite() && clean > 20.0, "{clean}");
    // Shift every element by about one quantisation step of the output
    // (calibrated symmetric: max|t| / 127).
    let step = last.values.iter().map(|a| a.abs()).fold(0.0f32, f32::max) / 127.0;
    let shifted: Vec<f32> = last.values.iter().map(|&v| v + step).collect();
    let worse = sqnr(&shifted, &want);
    assert!(worse < clean - 1.0, "{worse} vs {clean}");
}

/// clip_text's trace: NPU, boundary and CPU tracks named, the complete
/// events laid end to end in execution order, each NPU layer lasting its
/// simulated cycles at the config's clock and each CPU-fallback part its
/// measured host time; the CSV has one `cpu` row per fallback part with
/// its reasons.
#[test]
fn trace_and_fallback_rows_of_a_model_with_fallback() {
    let dir = scratch("clip");
    let (trace, csv) = (dir.join("t.json"), dir.join("layers.csv"));
    let r = bench(
        "clip_text",
        &[
            "--trace",
            &trace.display().to_string(),
            "--csv",
            &csv.display().to_string(),
        ],
    );
    let events: Vec<Json> =
        serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    let table = std::fs::read_to_string(&csv).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let track = |name: &str| {
        events
            .iter()
            .find(|e| e["ph"] == "M" && e["args"]["name"] == name)
            .unwrap_or_else(|| panic!("no {name} track"))["tid"]
            .clone()
    };
    let (npu, cpu) = (track("NPU"), track("CPU"));
    track("boundary");
    let x: Vec<&Json> = events.iter().filter(|e| e["ph"] == "X").collect();
    let num = |e: &Json, k: &str| e[k].as_f64().unwrap();
    for w in x.windows(2) {
        assert!(
            num(w[0], "ts") + num(w[0], "dur") <= num(w[1], "ts") + 1e-6,
            "{} then {}",
            w[0],
            w[1]
        );
    }
    let clock = r["clock_mhz"].as_f64().unwrap();
    let layers = r["layers"].as_array().unwrap();
    let on_npu: Vec<&&Json> = x.iter().filter(|e| e["tid"] == npu).collect();
    assert_eq!(on_npu.len(), layers.len());
    for (e, l) in on_npu.iter().zip(layers) {
        assert_eq!(e["name"], l["name"]);
        let want = l["cycles"].as_f64().unwrap() / clock;
        assert!((num(e, "dur") - want).abs() < 1e-9, "{e} vs {l}");
    }
    let fallback = r["fallback"].as_array().unwrap();
    assert_eq!(
        fallback.len(),
        r["fallback_parts"].as_u64().unwrap() as usize
    );
    assert!(!fallback.is_empty());
    let on_cpu: Vec<&&Json> = x.iter().filter(|e| e["tid"] == cpu).collect();
    assert_eq!(on_cpu.len(), fallback.len());
    for (e, f) in on_cpu.iter().zip(fallback) {
        let want = f["host_ms"].as_f64().unwrap() * 1e3;
        assert!(
            (num(e, "dur") - want).abs() < 1e-6 * want.max(1.0),
            "{e} vs {f}"
        );
        assert!(!f["reasons"].as_array().unwrap().is_empty(), "{f}");
    }
    // No gaps: the timeline ends at the sum of the events.
    let total: f64 = x.iter().map(|e| num(e, "dur")).sum();
    let last = x.last().unwrap();
    assert!((num(last, "ts") + num(last, "dur") - total).abs() < 1e-6 * total);

    let cpu_rows: Vec<&str> = table
        .lines()
        .filter(|l| l.contains(",cpu,cpu-fallback,"))
        .collect();
    assert_eq!(cpu_rows.len(), fallback.len());
    assert!(
        cpu_rows
            .iter()
            .any(|l| l.contains("no NPU kernel for Where")),
        "{cpu_rows:?}"
    );
    let npu_rows = table.lines().filter(|l| l.contains(",npu,")).count();
    assert_eq!(npu_rows, layers.len());
}

/// `--calibrate DATA.npz` on `bench` and `run`: calibrating on the run's
/// own inputs file gives the default's figures and output exactly; on a
/// sample 8× as large the activation scales are 8× coarser, so the last
/// layer's SQNR drops and the output changes; a non-NPU backend refuses
/// the flag (and `bench` refuses `--trace`).
#[test]
fn calibrate_takes_the_sample_from_the_given_file() {
    let dir = scratch("cal");
    let f = |ext: &str| {
        fixture(&format!("mlp_external_data.{ext}"))
            .display()
            .to_string()
    };
    let inputs = m4c_runtime::read_npz(std::path::Path::new(&f("inputs.npz"))).unwrap();
    let scaled: Vec<(String, Value)> = inputs
        .iter()
        .map(|(k, v)| {
            let Value::F32(a) = v else { panic!("{k}") };
            (k.clone(), Value::F32(a.mapv(|x| 8.0 * x)))
        })
        .collect();
    let wide = dir.join("wide.npz");
    m4c_runtime::write_npz(&wide, &[], &scaled).unwrap();
    let last_db = |r: &Json| {
        r["layers"].as_array().unwrap().last().unwrap()["sqnr_db"]
            .as_f64()
            .unwrap()
    };
    let default = bench("mlp_external_data", &[]);
    let same = bench("mlp_external_data", &["--calibrate", &f("inputs.npz")]);
    let coarse = bench(
        "mlp_external_data",
        &["--calibrate", &wide.display().to_string()],
    );
    assert_eq!(last_db(&default), last_db(&same));
    assert_eq!(default["cycles"], same["cycles"]);
    assert!(
        last_db(&coarse) < last_db(&default) - 6.0,
        "{} vs {}",
        last_db(&coarse),
        last_db(&default)
    );

    let run = |extra: &[&str], out: &str| {
        let out = dir.join(out);
        let mut args = vec![
            "run".to_string(),
            f("onnx"),
            "--inputs".into(),
            f("inputs.npz"),
            "-o".into(),
            out.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let o = m4c(&args);
        (o, out)
    };
    let (o, plain) = run(&["--backend", "npu"], "plain.npz");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let wide_arg = wide.display().to_string();
    let (o, cal) = run(&["--backend", "npu", "--calibrate", &wide_arg], "cal.npz");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("calibrating NPU activation ranges on"),
        "{}",
        text(&o)
    );
    let read = |p: &std::path::Path| f32s(&m4c_runtime::read_npz(p).unwrap()["logits"]);
    assert_ne!(read(&plain), read(&cal));
    let (o, _) = run(&["--calibrate", &wide_arg], "cpu.npz");
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).contains("--calibrate applies to --backend npu"),
        "{}",
        text(&o)
    );
    let o = m4c(&[
        "bench",
        &f("onnx"),
        "--inputs",
        &f("inputs.npz"),
        "--trace",
        &dir.join("t.json").display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("apply to --backend npu"), "{}", text(&o));
    std::fs::remove_dir_all(&dir).unwrap();
}
