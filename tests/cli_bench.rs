//! `m4c bench gemm`: the JSON report is self-consistent and bad targets are
//! one-line errors (speed itself is reported, never asserted).

use std::process::Command;

fn m4c(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_m4c"))
        .args(args)
        .output()
        .expect("m4c runs")
}

#[test]
fn gemm_json_report_is_consistent() {
    let out = m4c(&[
        "bench", "gemm", "--m", "3", "--k", "5", "--n", "7", "--runs", "2", "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let number = |key: &str| report[key].as_f64().unwrap_or_else(|| panic!("no {key}"));
    let flops = 2.0 * 3.0 * 5.0 * 7.0;
    let gflops = flops / (number("median_ms") * 1e-3) / 1e9;
    assert!((number("gflops") - gflops).abs() <= 1e-9 * gflops);
    let fraction = number("gflops") / number("peak_gflops");
    assert!((number("peak_fraction") - fraction).abs() <= 1e-12);
    assert!(number("peak_gflops") > 0.0 && number("runs") >= 2.0);
    // Three rows: a weight-bound product, reported against the measured
    // read bandwidth.
    let gbps = 4.0 * 5.0 * 7.0 / (number("median_ms") * 1e-3) / 1e9;
    assert!((number("weight_gbps") - gbps).abs() <= 1e-9 * gbps);
    assert!(number("read_gbps") > 0.0);
}

#[test]
fn unknown_target_and_cpu_are_one_line_errors() {
    for (flag, value, message) in [
        ("--target", "riscv64", "unknown target `riscv64`"),
        ("--cpu", "znver99", "unknown CPU `znver99`"),
    ] {
        let out = m4c(&[
            "bench", "gemm", "--m", "2", "--k", "2", "--n", "2", flag, value,
        ]);
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(message), "{stderr}");
    }
}

#[test]
fn zero_sized_gemm_is_an_error() {
    let out = m4c(&["bench", "gemm", "--m", "0", "--k", "2", "--n", "2"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("every dimension must be at least 1"));
}

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn model_bench_reports_median_and_compile_time_for_both_backends() {
    for backend in ["cpu", "reference"] {
        let model = fixture("mlp_external_data.onnx");
        let inputs = fixture("mlp_external_data.inputs.npz");
        let out = m4c(&[
            "bench",
            &model,
            "--backend",
            backend,
            "--inputs",
            &inputs,
            "--runs",
            "3",
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let number = |key: &str| report[key].as_f64().unwrap_or_else(|| panic!("no {key}"));
        assert!(number("median_ms") >= number("min_ms") && number("min_ms") > 0.0);
        assert!(number("runs") >= 3.0);
        assert_eq!(report["backend"], backend);
        if backend == "cpu" {
            assert!(number("compile_ms") > 0.0);
            let cpu = &report["code"];
            assert!(
                cpu["arena_bytes"].as_u64().unwrap() <= cpu["naive_arena_bytes"].as_u64().unwrap()
            );
        }
    }
}

#[test]
fn model_bench_without_a_model_or_with_missing_inputs_is_a_one_line_error() {
    let out = m4c(&["bench"]);
    assert_eq!(out.status.code(), Some(2));
    let model = fixture("mlp_external_data.onnx");
    let wrong = fixture("resnet_small.inputs.npz");
    let out = m4c(&["bench", &model, "--inputs", &wrong]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no array for model input"), "{stderr}");
}
