//! Bad input never panics: each case gives a one-line error naming the
//! problem and the place, exit status 2, and no partial output file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "common/onnx.rs"]
mod onnx;
use onnx::{node, write_model};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A fresh folder for one case, removed when it is dropped.
fn scratch(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("m4c-bad-{tag}-"))
        .tempdir()
        .unwrap()
}

fn m4c(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_m4c"))
        .args(args)
        .output()
        .unwrap()
}

/// Asserts exit 2, a single `error:` line containing every `needle`.
fn assert_error(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "missing `{n}` in: {err}");
    }
}

fn run_model(model: &Path, inputs: &Path, out: &Path) -> Output {
    m4c(&[
        "run".as_ref(),
        model.as_os_str(),
        "--inputs".as_ref(),
        inputs.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
    ])
}

#[test]
fn truncated_protobuf() {
    let dir = scratch("trunc");
    let d = dir.path();
    let bytes = std::fs::read(fixture("resnet_small.onnx")).unwrap();
    let bad = d.join("truncated.onnx");
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let out_file = d.join("out.npz");
    let out = run_model(&bad, &fixture("resnet_small.inputs.npz"), &out_file);
    assert_error(&out, &["truncated.onnx", "not a valid ONNX protobuf"]);
    assert!(!out_file.exists());
    let out = m4c(&["inspect".as_ref(), bad.as_os_str()]);
    assert_error(&out, &["truncated.onnx"]);
}

#[test]
fn corrupt_bytes() {
    let dir = scratch("corrupt");
    let d = dir.path();
    let bad = d.join("garbage.onnx");
    std::fs::write(&bad, [0xffu8; 64]).unwrap();
    assert_error(
        &m4c(&["inspect".as_ref(), bad.as_os_str()]),
        &["garbage.onnx", "not a valid ONNX protobuf"],
    );
}

#[test]
fn missing_model_file() {
    let out = m4c(&["inspect".as_ref(), "no/such/model.onnx".as_ref()]);
    assert_error(&out, &["no/such/model.onnx"]);
}

#[test]
fn missing_external_data() {
    let dir = scratch("extdata");
    let d = dir.path();
    std::fs::copy(
        fixture("mlp_external_data.onnx"),
        d.join("mlp_external_data.onnx"),
    )
    .unwrap();
    let out_file = d.join("out.npz");
    let out = run_model(
        &d.join("mlp_external_data.onnx"),
        &fixture("mlp_external_data.inputs.npz"),
        &out_file,
    );
    assert_error(
        &out,
        &[
            "mlp_external_data.onnx",
            "external data file",
            "mlp_external_data.onnx.data",
        ],
    );
    assert!(!out_file.exists());
}

#[test]
fn short_external_data() {
    let dir = scratch("extshort");
    let d = dir.path();
    std::fs::copy(
        fixture("mlp_external_data.onnx"),
        d.join("mlp_external_data.onnx"),
    )
    .unwrap();
    std::fs::write(d.join("mlp_external_data.onnx.data"), [0u8; 16]).unwrap();
    let out = run_model(
        &d.join("mlp_external_data.onnx"),
        &fixture("mlp_external_data.inputs.npz"),
        &d.join("o.npz"),
    );
    assert_error(&out, &["has 16 bytes"]);
}

#[test]
fn unknown_opset() {
    let dir = scratch("opset");
    let d = dir.path();
    let p = d.join("future.onnx");
    write_model(&p, 99, vec![node("Relu", "", "r", "x", "y")]);
    assert_error(
        &m4c(&["inspect".as_ref(), p.as_os_str()]),
        &["future.onnx", "opset 99"],
    );
}

#[test]
fn every_unsupported_op_is_reported_at_once() {
    let dir = scratch("unsupported");
    let d = dir.path();
    let p = d.join("odd.onnx");
    write_model(
        &p,
        17,
        vec![
            node("NonZero", "", "nz", "x", "a"),
            node("Frobnicate", "com.example", "frob", "a", "b"),
            node("TopK", "", "topk", "b", "y"),
        ],
    );
    let inputs = d.join("in.npz");
    m4c_runtime::write_npz(
        &inputs,
        &[],
        &[(
            "x".into(),
            m4c_ops::Value::F32(ndarray::ArrayD::zeros(vec![4])),
        )],
    )
    .unwrap();
    let out = run_model(&p, &inputs, &d.join("o.npz"));
    assert_error(
        &out,
        &[
            "3 node(s) cannot be lowered",
            "NonZero (node 'nz', opset 17)",
            "com.example.Frobnicate (node 'frob'",
            "TopK (node 'topk', opset 17)",
        ],
    );
    // inspect reports them all, shows the part that lowers, and exits 2
    // with one error line.
    let out = m4c(&["inspect".as_ref(), p.as_os_str()]);
    assert_eq!(out.status.code(), Some(2));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("unsupported ").count(), 3, "{stdout}");
    assert!(stdout.contains("IR ops (the part that lowers)"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("3 node(s) cannot be lowered"), "{stderr}");
}

#[test]
fn input_shape_mismatch() {
    let dir = scratch("shape");
    let d = dir.path();
    let inputs = d.join("in.npz");
    m4c_runtime::write_npz(
        &inputs,
        &[],
        &[(
            "image".into(),
            m4c_ops::Value::F32(ndarray::ArrayD::zeros(vec![1, 3, 8, 8])),
        )],
    )
    .unwrap();
    let out = run_model(&fixture("resnet_small.onnx"), &inputs, &d.join("o.npz"));
    assert_error(&out, &["resnet_small.onnx", "input", "declares"]);
}

#[test]
fn input_dtype_mismatch() {
    let dir = scratch("dtype");
    let d = dir.path();
    let src = m4c_runtime::read_npz(&fixture("resnet_small.inputs.npz")).unwrap();
    let (name, v) = src.into_iter().next().unwrap();
    let as_int = m4c_ops::Value::I64(ndarray::ArrayD::zeros(v.shape().to_vec()));
    let inputs = d.join("in.npz");
    m4c_runtime::write_npz(&inputs, &[], &[(name.clone(), as_int)]).unwrap();
    let out = run_model(&fixture("resnet_small.onnx"), &inputs, &d.join("o.npz"));
    assert_error(
        &out,
        &[&format!("input '{name}' is i64 but the model expects f32")],
    );
}

#[test]
fn npz_missing_key() {
    let dir = scratch("key");
    let d = dir.path();
    let inputs = d.join("in.npz");
    m4c_runtime::write_npz(
        &inputs,
        &[],
        &[(
            "something_else".into(),
            m4c_ops::Value::F32(ndarray::ArrayD::zeros(vec![1])),
        )],
    )
    .unwrap();
    let out_file = d.join("o.npz");
    let out = run_model(&fixture("resnet_small.onnx"), &inputs, &out_file);
    assert_error(&out, &["in.npz", "no array for model input"]);
    assert!(!out_file.exists());
}

#[test]
fn npz_not_a_zip() {
    let dir = scratch("npz");
    let d = dir.path();
    let inputs = d.join("in.npz");
    std::fs::write(&inputs, b"PK nonsense").unwrap();
    assert_error(
        &run_model(&fixture("resnet_small.onnx"), &inputs, &d.join("o.npz")),
        &["in.npz", "not a valid .npz"],
    );
}
