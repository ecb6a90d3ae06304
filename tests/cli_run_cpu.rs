//! `m4c run --backend cpu`: the CLI path through compiled code, with the
//! same options and exit codes as the reference path.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn run(model: &str, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_m4c"))
        .arg("run")
        .arg(fixture(&format!("{model}.onnx")))
        .arg("--inputs")
        .arg(fixture(&format!("{model}.inputs.npz")))
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn compiled_code_matches_onnxruntime_through_the_cli() {
    for model in ["clip_vision_dynamo", "lstm_lm"] {
        let expect = fixture(&format!("{model}.expected.npz"));
        let out = run(
            model,
            &[
                "--backend",
                "cpu",
                "--threads",
                "2",
                "--expect",
                expect.to_str().unwrap(),
            ],
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "{model}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn bad_cpu_names_and_foreign_targets_are_one_line_errors() {
    for extra in [["--cpu", "bogus9"], ["--target", "aarch64"]] {
        let mut args = vec!["--backend", "cpu"];
        args.extend(extra);
        let out = run("resnet_small", &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
}
