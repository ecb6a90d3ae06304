//! `m4c compile MODEL --backend gpu -o DIR` on every committed fixture
//! writes a WGSL module that naga (wgpu's own front end) parses and
//! validates, with an entry point for every kernel of the plan beside
//! it. Needs no GPU: this is the check every host runs; the conformance
//! suite runs the same shaders where a Vulkan adapter exists.

use std::path::Path;
use std::process::Command;

#[test]
fn every_fixture_compiles_to_valid_wgsl() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let tmp = tempfile::tempdir().unwrap();
    let mut models: Vec<_> = std::fs::read_dir(&fixtures)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "onnx"))
        .collect();
    models.sort();
    assert!(models.len() >= 20, "{} fixtures", models.len());
    for model in &models {
        let stem = model.file_stem().unwrap().to_str().unwrap();
        let out = tmp.path().join(stem);
        let o = Command::new(env!("CARGO_BIN_EXE_m4c"))
            .args(["compile", model.to_str().unwrap(), "--backend", "gpu", "-o"])
            .arg(&out)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "{stem}: {stderr}");
        let file = |ext: &str| {
            std::fs::read_dir(&out)
                .unwrap()
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.to_str().is_some_and(|s| s.ends_with(ext)))
                .unwrap_or_else(|| panic!("{stem}: no *{ext}"))
        };
        let text = std::fs::read_to_string(file(".wgsl")).unwrap();
        let module = naga::front::wgsl::parse_str(&text)
            .unwrap_or_else(|e| panic!("{stem}: {}", e.emit_to_string(&text)));
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::default(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{stem}: {}", e.emit_to_string(&text)));
        let plan: serde_json::Value =
            serde_json::from_slice(&std::fs::read(file(".plan.json")).unwrap()).unwrap();
        let kernels = plan["kernels"].as_array().unwrap();
        assert!(!kernels.is_empty(), "{stem}: no kernels");
        for k in kernels {
            let entry = k["entry"].as_str().unwrap();
            assert!(
                module.entry_points.iter().any(|e| e.name == entry),
                "{stem}: no entry point {entry}"
            );
        }
    }
}
