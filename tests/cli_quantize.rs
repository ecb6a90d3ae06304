//! `m4c quantize` and `m4c run --min-cosine` end to end: the fixtures
//! quantised with each scheme run in m4c within the cosine bounds
//! of onnxruntime's fp32 outputs (0.98 int8, 0.97 w4); the report, the
//! encodings round trip, and hostile input (one `error:` line, exit 2).

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn m4c<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_m4c"))
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `m4c quantize FIXTURE.onnx --calibrate FIXTURE.inputs.npz --scheme S
/// EXTRA... -o DIR/q.onnx`, which must succeed; returns the output path.
fn quantize(dir: &Path, name: &str, scheme: &str, extra: &[&str]) -> PathBuf {
    let out = dir.join(format!("{name}.{}.onnx", scheme.replace(':', "_")));
    let mut args: Vec<OsString> = vec![
        "quantize".into(),
        fixture(&format!("{name}.onnx")).into(),
        "--calibrate".into(),
        fixture(&format!("{name}.inputs.npz")).into(),
        "--scheme".into(),
        scheme.into(),
        "-o".into(),
        out.clone().into(),
    ];
    args.extend(extra.iter().map(OsString::from));
    let o = m4c(&args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    out
}

/// `m4c run MODEL --inputs FIXTURE.inputs.npz --expect
/// FIXTURE.expected.npz --min-cosine C`.
fn run_against_fp32(model: &Path, name: &str, min_cosine: f64) -> Output {
    m4c(&[
        OsString::from("run"),
        model.into(),
        "--inputs".into(),
        fixture(&format!("{name}.inputs.npz")).into(),
        "--expect".into(),
        fixture(&format!("{name}.expected.npz")).into(),
        "--min-cosine".into(),
        min_cosine.to_string().into(),
    ])
}

/// The acceptance: every scheme on the fixtures within its bound.
#[test]
fn quantised_fixtures_stay_within_the_cosine_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &[&str], f64)] = &[
        ("imu_encoder", "int8", &["--per-channel"], 0.98),
        ("clip_text", "int8", &["--per-channel"], 0.98),
        ("clip_vision", "int8", &["--per-channel"], 0.98),
        ("whisper_encoder", "int8", &["--per-channel"], 0.98),
        ("imu_encoder", "int8-dynamic", &["--per-channel"], 0.98),
        ("imu_encoder", "w8", &["--per-channel"], 0.98),
        ("llama_prefill", "w4", &[], 0.97),
        ("llama_decode", "w4", &[], 0.97),
    ];
    for (name, scheme, extra, bound) in cases {
        let q = quantize(dir.path(), name, scheme, extra);
        let o = run_against_fp32(&q, name, *bound);
        assert_eq!(o.status.code(), Some(0), "{name} {scheme}: {}", text(&o));
        assert!(text(&o).contains("cosine"), "{}", text(&o));
    }
}

/// `--min-cosine` fails an output below the bound (exit 1), and passes the
/// fp32 model against its own reference.
#[test]
fn min_cosine_fails_below_the_bound() {
    let fp32 = fixture("imu_encoder.onnx");
    let o = run_against_fp32(&fp32, "imu_encoder", 0.999999);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // The reference reversed: same name and shape, another direction.
    let dir = tempfile::tempdir().unwrap();
    let want = m4c_runtime::read_npz(&fixture("imu_encoder.expected.npz")).unwrap();
    let t = want["imu_embeds"].to_tensor();
    let mut v = t.to_f32_vec().unwrap();
    v.reverse();
    let reversed = m4c_ops::Value::from_tensor(&m4c_ir::Tensor::from_f32(&t.shape, &v)).unwrap();
    let other = dir.path().join("reversed.npz");
    m4c_runtime::write_npz(&other, &[], &[("imu_embeds".into(), reversed)]).unwrap();
    let o = m4c(&[
        OsString::from("run"),
        fp32.into(),
        "--inputs".into(),
        fixture("imu_encoder.inputs.npz").into(),
        "--expect".into(),
        other.into(),
        "--min-cosine".into(),
        "0.98".into(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("FAIL (cosine below 0.98)"),
        "{}",
        text(&o)
    );
    // Quantised to 4 bits, the LLaMA decoder is not exact.
    let q = quantize(dir.path(), "llama_prefill", "w4", &[]);
    let o = run_against_fp32(&q, "llama_prefill", 0.99999);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let o = m4c(&["run", "x.onnx", "--inputs", "x.npz", "--min-cosine", "2"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

/// The report names every quantised layer and the ten worst, with the
/// per-output metrics; its numbers agree with `m4c run`'s bound.
#[test]
fn report_measures_outputs_and_layers() {
    let dir = tempfile::tempdir().unwrap();
    let rep = dir.path().join("report");
    quantize(
        dir.path(),
        "llama_prefill",
        "w4",
        &["--report", rep.to_str().unwrap()],
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rep.join("report.json")).unwrap()).unwrap();
    let out = &json["outputs"][0];
    assert_eq!(out["name"], "logits");
    assert_eq!(out["kind"], "next-token");
    assert!(out["cosine"].as_f64().unwrap() >= 0.97, "{out}");
    assert!(out["top1_agreement"].as_f64().unwrap() > 0.5, "{out}");
    assert!(out["kl_divergence"].as_f64().unwrap() >= 0.0, "{out}");
    let layers = json["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 15); // 7 projections × 2 layers + lm_head
    for l in layers {
        let (acc, iso) = (
            l["sqnr_accumulated_db"].as_f64().unwrap(),
            l["sqnr_isolated_db"].as_f64().unwrap(),
        );
        assert!(iso > 10.0 && acc > 5.0, "{l}");
    }
    assert_eq!(json["worst_layers"].as_array().unwrap().len(), 10);
    let md = std::fs::read_to_string(rep.join("report.md")).unwrap();
    assert!(md.contains("/model/lm_head/MatMul"), "{md}");
    let svg = std::fs::read_to_string(rep.join("sqnr.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.matches("<rect").count() == 30);
}

/// Encodings written by one run and edited (a layer switched off, a scale
/// changed) drive the next without calibration data.
#[test]
fn encodings_round_trip_with_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let q = quantize(dir.path(), "imu_encoder", "int8", &["--per-channel"]);
    let enc_path = q.with_extension("encodings.json");
    let mut enc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&enc_path).unwrap()).unwrap();
    assert_eq!(enc["format"], "m4c-encodings/1");
    enc["layers"]["/head/MatMul"] = serde_json::json!({ "quantize": false });
    let edited = dir.path().join("edited.json");
    std::fs::write(&edited, enc.to_string()).unwrap();
    let out = dir.path().join("again.onnx");
    let o = m4c(&[
        OsString::from("quantize"),
        fixture("imu_encoder.onnx").into(),
        "--scheme".into(),
        "int8".into(),
        "--per-channel".into(),
        "--encodings".into(),
        edited.clone().into(),
        "-o".into(),
        out.clone().into(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("13 layer(s) quantised"), "{}", text(&o));
    let again: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.with_extension("encodings.json")).unwrap(),
    )
    .unwrap();
    // The switched-off layer's input needs no encoding any more.
    let mut want = enc["activations"].clone();
    want.as_object_mut()
        .unwrap()
        .remove("/Gather_output_0")
        .unwrap();
    assert_eq!(again["activations"], want);
    assert_eq!(again["layers"]["/head/MatMul"]["quantize"], false);
}

/// SmoothQuant keeps the int8 LLaMA within the bound.
#[test]
fn smoothquant_int8_llama() {
    let dir = tempfile::tempdir().unwrap();
    let q = quantize(
        dir.path(),
        "llama_prefill",
        "int8",
        &["--per-channel", "--smooth", "0.5"],
    );
    let o = run_against_fp32(&q, "llama_prefill", 0.98);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

/// One `error:` line naming the problem, exit 2, nothing written.
fn refused(args: &[OsString], out: &Path, needle: &str) {
    let o = m4c(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: ") && err.contains(needle), "{err}");
    assert!(!out.exists());
}

fn quantize_args(model: &Path, calibrate: &Path, out: &Path, extra: &[&str]) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec![
        "quantize".into(),
        model.into(),
        "--calibrate".into(),
        calibrate.into(),
        "-o".into(),
        out.into(),
    ];
    a.extend(extra.iter().map(OsString::from));
    a
}

#[test]
fn calibration_data_missing_an_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut arrays = m4c_runtime::read_npz(&fixture("clip_text.inputs.npz")).unwrap();
    arrays.remove("attention_mask");
    let partial = dir.path().join("partial.npz");
    let named: Vec<_> = arrays.into_iter().collect();
    m4c_runtime::write_npz(&partial, &[], &named).unwrap();
    let out = dir.path().join("q.onnx");
    refused(
        &quantize_args(&fixture("clip_text.onnx"), &partial, &out, &[]),
        &out,
        "partial.npz: no array for model input 'attention_mask'",
    );
}

#[test]
fn encodings_of_another_model_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let imu = quantize(dir.path(), "imu_encoder", "int8", &[]);
    let enc = imu.with_extension("encodings.json");
    let out = dir.path().join("clip.onnx");
    refused(
        &quantize_args(
            &fixture("clip_text.onnx"),
            &fixture("clip_text.inputs.npz"),
            &out,
            &["--encodings", enc.to_str().unwrap()],
        ),
        &out,
        "encodings are for model",
    );
    // A hand-edited scale of 0 is named too.
    let mut e: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&enc).unwrap()).unwrap();
    let first = e["activations"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    e["activations"][&first]["scale"] = 0.into();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, e.to_string()).unwrap();
    let out = dir.path().join("imu2.onnx");
    refused(
        &quantize_args(
            &fixture("imu_encoder.onnx"),
            &fixture("imu_encoder.inputs.npz"),
            &out,
            &["--encodings", bad.to_str().unwrap()],
        ),
        &out,
        &format!("activation '{first}': scale 0 is not a positive number"),
    );
    // A zero point outside int8, and a layer's bits other than 4 or 8.
    e["activations"][&first]["scale"] = 0.5.into();
    e["activations"][&first]["zero_point"] = 300.into();
    std::fs::write(&bad, e.to_string()).unwrap();
    refused(
        &quantize_args(
            &fixture("imu_encoder.onnx"),
            &fixture("imu_encoder.inputs.npz"),
            &out,
            &["--encodings", bad.to_str().unwrap()],
        ),
        &out,
        &format!("activation '{first}': zero point 300 is outside int8's range"),
    );
    e["activations"][&first]["zero_point"] = 0.into();
    e["layers"] = serde_json::json!({ "/blocks.0/qkv/MatMul": { "bits": 5 } });
    std::fs::write(&bad, e.to_string()).unwrap();
    refused(
        &quantize_args(
            &fixture("imu_encoder.onnx"),
            &fixture("imu_encoder.inputs.npz"),
            &out,
            &["--encodings", bad.to_str().unwrap()],
        ),
        &out,
        "layer '/blocks.0/qkv/MatMul': bits 5 is not 4 or 8",
    );
    std::fs::write(&bad, "{not json").unwrap();
    refused(
        &quantize_args(
            &fixture("imu_encoder.onnx"),
            &fixture("imu_encoder.inputs.npz"),
            &out,
            &["--encodings", bad.to_str().unwrap()],
        ),
        &out,
        "bad.json: not an encodings file",
    );
}

#[test]
fn unknown_excludes_and_options_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q.onnx");
    let (model, data) = (
        fixture("imu_encoder.onnx"),
        fixture("imu_encoder.inputs.npz"),
    );
    refused(
        &quantize_args(&model, &data, &out, &["--exclude", "/no/such/node"]),
        &out,
        "--exclude /no/such/node: no node or operator of that name",
    );
    // Option values are checked by the parser (its usage hint follows).
    let o = m4c(&quantize_args(&model, &data, &out, &["--scheme", "w4:24"]));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("the group must be a power of two"),
        "{}",
        text(&o)
    );
    refused(
        &quantize_args(&model, &data, &out, &["--smooth", "2"]),
        &out,
        "between 0 and 1",
    );
    let o = m4c(&quantize_args(&model, &data, &out, &["--head-bits", "5"]));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("'5' is not 4 or 8"), "{}", text(&o));
}

#[test]
fn the_output_may_not_be_an_input() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("imu.onnx");
    std::fs::copy(fixture("imu_encoder.onnx"), &model).unwrap();
    let before = std::fs::read(&model).unwrap();
    let o = m4c(&quantize_args(
        &model,
        &fixture("imu_encoder.inputs.npz"),
        &model,
        &[],
    ));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert_eq!(std::fs::read(&model).unwrap(), before);
}

/// Calibration over a stack of samples (the fixture input scaled and
/// shifted, not the input itself) still quantises the IMU encoder within
/// the bound on the fixture's own input (held out).
#[test]
fn calibration_over_a_stack_of_held_out_samples() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = m4c_runtime::read_npz(&fixture("imu_encoder.inputs.npz")).unwrap();
    let t = inputs["imu"].to_tensor();
    let x = t.to_f32_vec().unwrap();
    let mut stack = vec![];
    for (k, (scale, shift)) in [(0.8f32, 0.1f32), (1.2, -0.1), (1.0, 0.05), (0.9, 0.0)]
        .iter()
        .enumerate()
    {
        stack.extend(x.iter().enumerate().map(|(i, v)| {
            let wobble = ((i * 7 + k * 13) % 11) as f32 / 110.0;
            v * scale + shift + wobble
        }));
    }
    let mut shape = vec![4];
    shape.extend(&t.shape);
    let value = m4c_ops::Value::from_tensor(&m4c_ir::Tensor::from_f32(&shape, &stack)).unwrap();
    let data = dir.path().join("stack.npz");
    m4c_runtime::write_npz(&data, &[], &[("imu".into(), value)]).unwrap();
    let out = dir.path().join("q.onnx");
    let o = m4c(&quantize_args(
        &fixture("imu_encoder.onnx"),
        &data,
        &out,
        &["--scheme", "int8", "--per-channel"],
    ));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = run_against_fp32(&out, "imu_encoder", 0.98);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}
