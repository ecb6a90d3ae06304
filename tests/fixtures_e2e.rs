//! Every committed fixture, run by `m4c run --backend NAME --expect` on
//! every backend this host runs (`m4c backends --json`) against the
//! outputs onnxruntime produced for it (tests/fixtures/*.expected.npz), at
//! the default tolerance (rtol 1e-4, atol 1e-5).

use std::path::Path;
use std::process::Command;

fn fixtures() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".onnx"))
                .map(str::to_string)
        })
        .collect();
    names.sort();
    names
}

/// The backends whose code this host runs (the registry's word, as
/// `m4c backends` prints it).
fn runnable_backends() -> Vec<String> {
    m4c_backends::all()
        .iter()
        .filter(|b| m4c_backends::runnable(**b, None).is_ok())
        .map(|b| b.name().to_string())
        .collect()
}

#[test]
fn every_fixture_matches_onnxruntime_on_every_backend() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let names = fixtures();
    assert!(names.len() >= 20, "fixtures missing: {names:?}");
    let backends = runnable_backends();
    assert!(backends.contains(&"reference".to_string()), "{backends:?}");
    let mut failures = vec![];
    for backend in &backends {
        for name in &names {
            let out = Command::new(env!("CARGO_BIN_EXE_m4c"))
                .arg("run")
                .arg(dir.join(format!("{name}.onnx")))
                .arg("--inputs")
                .arg(dir.join(format!("{name}.inputs.npz")))
                .arg("--expect")
                .arg(dir.join(format!("{name}.expected.npz")))
                .args(["--backend", backend])
                .output()
                .unwrap();
            if out.status.code() != Some(0) {
                failures.push(format!(
                    "{name} on {backend}: exit {:?}\n{}{}",
                    out.status.code(),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        println!("{backend}: {} fixtures run", names.len());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn out_of_tolerance_exits_1() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    // Compare one model's outputs against another model's reference of the
    // same output name and shape: the run works, the numbers differ.
    let out = Command::new(env!("CARGO_BIN_EXE_m4c"))
        .args(["run"])
        .arg(dir.join("llama_lora.onnx"))
        .arg("--inputs")
        .arg(dir.join("llama_lora.inputs.npz"))
        .arg("--expect")
        .arg(dir.join("llama_prefill.expected.npz"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL"));
}

#[test]
fn firmware_modules_run_like_their_onnx_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let fw = std::env::temp_dir().join(format!("m4c-e2e-{}.fw", std::process::id()));
    let bin = env!("CARGO_BIN_EXE_m4c");
    let build = Command::new(bin)
        .args(["firmware", "build", "--module"])
        .arg(format!(
            "backbone={}",
            dir.join("llama_prefill.onnx").display()
        ))
        .arg("--module")
        .arg(format!(
            "img_enc={}",
            dir.join("clip_vision.onnx").display()
        ))
        .arg("-o")
        .arg(&fw)
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "{}",
        String::from_utf8_lossy(&build.stderr)
    );
    for (module, fixture) in [("backbone", "llama_prefill"), ("img_enc", "clip_vision")] {
        let out = Command::new(bin)
            .arg("run")
            .arg(&fw)
            .args(["--module", module, "--inputs"])
            .arg(dir.join(format!("{fixture}.inputs.npz")))
            .arg("--expect")
            .arg(dir.join(format!("{fixture}.expected.npz")))
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{module}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let no_module = Command::new(bin)
        .arg("run")
        .arg(&fw)
        .arg("--inputs")
        .arg(dir.join("llama_prefill.inputs.npz"))
        .output()
        .unwrap();
    assert_eq!(no_module.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&no_module.stderr)
        .contains("needs --module NAME (modules: backbone, img_enc)"));
    std::fs::remove_file(&fw).unwrap();
}
