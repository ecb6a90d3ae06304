//! `m4c npu explore`: the grid, the per-model Pareto front, its files, and
//! agreement with `m4c bench --backend npu` on the base machine.

mod common;

use common::{fixture, m4c, text};

#[test]
fn explore_writes_the_grid_and_agrees_with_bench_on_the_base_machine() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("explore");
    let model = fixture("mlp_external_data.onnx");
    let o = m4c(&[
        "npu".as_ref(),
        "explore".as_ref(),
        model.as_os_str(),
        fixture("distilbert.onnx").as_os_str(),
        "--array".as_ref(),
        "16x16,32x32".as_ref(),
        "--sram".as_ref(),
        "64,256".as_ref(),
        "--threads".as_ref(),
        "2".as_ref(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    for f in ["explore.md", "explore.csv", "explore.json", "pareto.svg"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let points: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("explore.json")).unwrap()).unwrap();
    let points = points.as_array().unwrap();
    assert_eq!(points.len(), 2 * 2 * 2, "2 models × 2 arrays × 2 SRAMs");
    for model in ["mlp_external_data.onnx", "distilbert.onnx"] {
        let of: Vec<_> = points.iter().filter(|p| p["model"] == model).collect();
        assert!(of
            .iter()
            .all(|p| p["result"]["Ok"]["cycles"].as_u64() > Some(0)));
        // The smallest machine is always on the front: nothing is smaller.
        let smallest = of
            .iter()
            .min_by(|a, b| {
                a["area"]
                    .as_f64()
                    .unwrap()
                    .total_cmp(&b["area"].as_f64().unwrap())
            })
            .unwrap();
        assert_eq!(smallest["pareto"], true, "{model}");
    }
    let csv = std::fs::read_to_string(out.join("explore.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 8);
    assert!(std::fs::read_to_string(out.join("pareto.svg"))
        .unwrap()
        .starts_with("<svg"));

    // edge-small is 32x32 with 256 KiB SRAMs: explore's variant written as
    // a file must simulate exactly as the preset does under `bench`.
    let base = points
        .iter()
        .find(|p| p["model"] == "mlp_external_data.onnx" && p["config"] == "32x32-sram256k-bw32")
        .expect("the base machine is in the grid");
    let b = m4c(&[
        "bench".as_ref(),
        model.as_os_str(),
        "--backend".as_ref(),
        "npu:edge-small".as_ref(),
        "--inputs".as_ref(),
        fixture("mlp_external_data.inputs.npz").as_os_str(),
        "--json".as_ref(),
    ]);
    assert!(b.status.success(), "{}", text(&b));
    let bench: serde_json::Value = serde_json::from_slice(&b.stdout).unwrap();
    assert_eq!(base["result"]["Ok"]["cycles"], bench["cycles"]);
}

#[test]
fn bad_grids_and_models_are_one_line_errors_or_rows() {
    let model = fixture("mlp_external_data.onnx");
    let o = m4c(&[
        "npu".as_ref(),
        "explore".as_ref(),
        model.as_os_str(),
        "--array".as_ref(),
        "32by32".as_ref(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "{err}"
    );
    assert!(err.contains("--array 32by32"), "{err}");

    let o = m4c(&[
        "npu".as_ref(),
        "explore".as_ref(),
        model.as_os_str(),
        "--array".as_ref(),
        "0x32".as_ref(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("array_rows"));

    // A model that cannot be read is a row; the run still succeeds.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.onnx");
    std::fs::write(&broken, b"not a model").unwrap();
    let o = m4c(&[
        "npu".as_ref(),
        "explore".as_ref(),
        model.as_os_str(),
        broken.as_os_str(),
        "--array".as_ref(),
        "32x32".as_ref(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("| broken.onnx | 32x32-sram256k-bw32 | 512.0 | failed: "),
        "{table}"
    );
}
