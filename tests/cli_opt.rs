//! `m4c opt`, `m4c partition` and `m4c run --adapter/--lora` end to end.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn m4c(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_m4c"))
        .args(args)
        .output()
        .unwrap()
}

/// The base LLaMA plus the PEFT adapter directory reproduces onnxruntime's
/// outputs of the model exported with the (unmerged) adapter inside, in
/// every policy; without the adapter it does not.
#[test]
fn base_model_plus_peft_adapter_matches_the_exported_lora_model() {
    let (base, inputs, want, adapter) = (
        fixture("llama_prefill.onnx"),
        fixture("llama_lora.inputs.npz"),
        fixture("llama_lora.expected.npz"),
        fixture("llama_lora_adapter"),
    );
    for policy in ["fold", "keep", "auto"] {
        let out = m4c(&[
            "run".as_ref(),
            base.as_os_str(),
            "--inputs".as_ref(),
            inputs.as_os_str(),
            "--adapter".as_ref(),
            adapter.as_os_str(),
            "--lora".as_ref(),
            policy.as_ref(),
            "--expect".as_ref(),
            want.as_os_str(),
        ]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{policy}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let without = m4c(&[
        "run".as_ref(),
        base.as_os_str(),
        "--inputs".as_ref(),
        inputs.as_os_str(),
        "--expect".as_ref(),
        want.as_os_str(),
    ]);
    assert_eq!(without.status.code(), Some(1));
}

#[test]
fn opt_prints_ir_and_a_report() {
    let out = m4c(&[
        "opt".as_ref(),
        fixture("llama_lora.onnx").as_os_str(),
        "--lora".as_ref(),
        "fold".as_ref(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let all = format!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("graph \""), "no IR printed");
    assert!(all.contains("lora-fold=4"), "{all}");
    assert!(all.contains("recognise-rmsnorm=5"), "{all}");
}

/// `--target` names where its figures come from: the measured machine,
/// the nominal CPU, or the NPU config.
#[test]
fn opt_targets_say_where_their_figures_come_from() {
    let model = fixture("clip_text.onnx");
    for (target, want) in [
        ("cpu-nominal", "cpu-nominal (nominal)"),
        (
            "npu:phone-flagship",
            "npu:phone-flagship (config: 128x128 array",
        ),
    ] {
        let out = m4c(&[
            "opt".as_ref(),
            model.as_os_str(),
            "--target".as_ref(),
            target.as_ref(),
            "--decompose".as_ref(),
            "-o".as_ref(),
            std::env::temp_dir().join("m4c-cli-opt.ir").as_os_str(),
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{target}: {text}");
        assert!(text.contains(want), "{target}: {text}");
        assert!(text.contains("recognise-layernorm=5"), "{target}: {text}");
    }
    let out = m4c(&[
        "opt".as_ref(),
        model.as_os_str(),
        "--target".as_ref(),
        "tpu".as_ref(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown target `tpu`"));
}

#[test]
fn partition_reports_every_fixture() {
    let models: Vec<PathBuf> = [
        "llama_prefill.onnx",
        "resnet_small.onnx",
        "whisper_encoder.onnx",
    ]
    .iter()
    .map(|m| fixture(m))
    .collect();
    let mut args: Vec<&std::ffi::OsStr> = vec!["partition".as_ref(), "--json".as_ref()];
    args.extend(models.iter().map(|m| m.as_os_str()));
    let out = m4c(&args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json.to_string().contains("llama_prefill"));
}

#[test]
fn partition_reports_a_bad_model_as_its_own_row() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("broken.onnx");
    std::fs::write(&bad, b"not a protobuf").unwrap();
    let good = fixture("resnet_small.onnx");
    let out = m4c(&[
        "partition".as_ref(),
        "--json".as_ref(),
        "--target".as_ref(),
        "npu:phone-flagship".as_ref(),
        bad.as_os_str(),
        good.as_os_str(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = json.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["status"], "fails-to-convert");
    assert!(
        rows[0]["error"].as_str().unwrap().contains("broken.onnx"),
        "{}",
        rows[0]
    );
    assert_ne!(rows[1]["status"], "fails-to-convert");
    assert_eq!(rows[1]["target"], "npu:phone-flagship");

    // Only bad models: an error, exit 2.
    let out = m4c(&["partition".as_ref(), bad.as_os_str()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no model could be converted"), "{err}");
}

#[test]
fn bad_adapter_directory_is_a_one_line_error() {
    let out = m4c(&[
        "run".as_ref(),
        fixture("llama_prefill.onnx").as_os_str(),
        "--inputs".as_ref(),
        fixture("llama_prefill.inputs.npz").as_os_str(),
        "--adapter".as_ref(),
        "no/such/adapter".as_ref(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("no/such/adapter"), "{err}");
}
