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

#[test]
fn profile_csv_lists_every_kernel_and_adds_up_to_the_kinds() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("kernels.csv");
    let model = fixture("resnet_small.onnx");
    let out = m4c(&[
        "bench",
        &model,
        "--runs",
        "1",
        "--profile",
        "--csv",
        csv.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("step,symbol,kind,median_ms,percent"));
    let mut by_kind = std::collections::BTreeMap::<String, f64>::new();
    let mut percent = 0.0;
    let mut steps = 0;
    for (i, line) in lines.enumerate() {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(f.len(), 5, "{line}");
        assert_eq!(f[0], i.to_string());
        assert!(f[1].ends_with(f[2]) && f[1].len() > f[2].len(), "{line}");
        let ms: f64 = f[3].parse().unwrap();
        assert!(ms >= 0.0);
        *by_kind.entry(f[2].to_string()).or_default() += ms;
        percent += f[4].parse::<f64>().unwrap();
        steps += 1;
    }
    assert!(steps > 5, "resnet_small has more than five kernels: {text}");
    assert!((percent - 100.0).abs() < 0.01 * steps as f64, "{percent}");
    // The printed kinds are the CSV's rows summed (printed to 1 µs).
    let printed: Vec<(String, f64)> = stderr
        .lines()
        .filter_map(|l| {
            let l = l.trim().strip_suffix(" ms")?;
            let (kind, ms) = l.split_once(' ')?;
            Some((kind.to_string(), ms.trim().parse().ok()?))
        })
        .collect();
    assert_eq!(printed.len(), by_kind.len(), "{stderr}");
    for (kind, ms) in printed {
        let sum = by_kind[&kind];
        assert!(
            (sum - ms).abs() <= 1e-3 + 1e-4 * steps as f64,
            "{kind}: {sum} vs {ms}"
        );
    }
}

#[test]
fn profile_csv_needs_profile_and_writes_nothing_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("kernels.csv");
    let out = m4c(&[
        "bench",
        &fixture("resnet_small.onnx"),
        "--csv",
        csv.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--profile"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
}
