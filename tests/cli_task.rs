//! `m4c task run` end to end on a firmware of the fixture modules: Path-2
//! scores are the cosine similarities of onnxruntime's embeddings, Path-3's
//! first greedy token is onnxruntime's argmax (with and without the
//! adapter), Path-4 reproduces onnxruntime's outputs, Path-1's prefix is
//! the projection's argmax; tasks run concurrently; bad manifests and
//! names exit 2 with one line.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use m4c_compiler::bundle::{build_adapter, build_firmware, write_atomically, FirmwareOptions};
use m4c_ops::Value;
use m4c_runtime::bundle::format::LoraMode;
use m4c_runtime::bundle::Bundle;
use m4c_runtime::read_npz;
use serde_json::Value as Json;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A directory with M4.fw, app.m4a (the fixture adapter on both backbone
/// modules), a projection and a manifest; built once per test binary.
fn setup() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // Cargo's scratch directory for integration tests (under target/).
        let dir =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-task-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let modules: Vec<(String, PathBuf)> = [
            ("backbone", "llama_prefill"),
            ("backbone_decode", "llama_decode"),
            ("img_enc", "clip_vision"),
            ("txt_enc", "clip_text"),
            ("aud_enc", "whisper_encoder"),
        ]
        .iter()
        .map(|(m, f)| (m.to_string(), fixture(&format!("{f}.onnx"))))
        .collect();
        let fw_bytes = build_firmware(&modules, &FirmwareOptions::default()).unwrap();
        write_atomically(&dir.join("M4.fw"), &[], &fw_bytes).unwrap();
        let fw = Bundle::from_bytes(&fw_bytes).unwrap();
        let both = ["backbone".to_string(), "backbone_decode".to_string()];
        let app =
            build_adapter(&fw, &both, &fixture("llama_lora_adapter"), LoraMode::Keep).unwrap();
        write_atomically(&dir.join("app.m4a"), &[], &app).unwrap();
        std::fs::write(dir.join("proj.npy"), npy_f32(&[2, 128, 16], &projection())).unwrap();
        let fixture_ids = "[98, 45, 18, 54, 58, 26, 81, 30, 31, 99]";
        let manifest = format!(
            r#"
[tasks.zero_shot]
path = 2
encoder = "img_enc"
encoder_output = "image_embeds"
text_encoder = "txt_enc"
text_output = "text_embeds"
[tasks.zero_shot.label_tokens]
fixture = {fixture_ids}
other = [98, 3, 4, 5, 99]

[tasks.text]
path = 3
decoder = "backbone_decode"
max_new_tokens = 3

[tasks.text_adapted]
path = 3
decoder = "backbone_decode"
adapter = "app.m4a"
max_new_tokens = 3

[tasks.caption]
path = 1
encoder = "img_enc"
encoder_output = "image_embeds"
projection = "proj.npy"
decoder = "backbone_decode"
max_new_tokens = 2

[tasks.audio]
path = 4
module = "aud_enc"
"#
        );
        std::fs::write(dir.join("tasks.toml"), manifest).unwrap();
        dir
    })
}

/// The Path-1 projection `[2, 128, 16]`, row-major.
fn projection() -> Vec<f32> {
    (0..2 * 128 * 16)
        .map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0)
        .collect()
}

/// An .npy file (format 1.0) of little-endian f32 (the root package has no
/// npy writer; the format is four fields and a padded header).
fn npy_f32(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}), }}",
        dims.join(", ")
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.bytes());
    out.extend(data.iter().flat_map(|x| x.to_le_bytes()));
    out
}

fn m4c(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_m4c"))
        .args(args)
        .output()
        .unwrap()
}

/// `m4c task run ... --json` of `task`, parsed.
fn task(name: &str, extra: &[&str]) -> Json {
    let dir = setup();
    let (fw, manifest) = (dir.join("M4.fw"), dir.join("tasks.toml"));
    let mut args = vec![
        "task",
        "run",
        fw.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
        "--task",
        name,
        "--json",
    ];
    args.extend(extra);
    let o = m4c(&args);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

fn f32s(v: &Value) -> Vec<f32> {
    let Value::F32(a) = v else { panic!("f32") };
    a.iter().copied().collect()
}

fn expected(fixture_name: &str, output: &str) -> Vec<f32> {
    f32s(&read_npz(&fixture(&format!("{fixture_name}.expected.npz"))).unwrap()[output])
}

#[test]
fn zero_shot_scores_are_cosines_of_the_onnxruntime_embeddings() {
    let input = fixture("clip_vision.inputs.npz");
    let r = task("zero_shot", &["--input", input.to_str().unwrap()]);
    let (img, txt) = (
        expected("clip_vision", "image_embeds"),
        expected("clip_text", "text_embeds"),
    );
    let dot: f32 = img.iter().zip(&txt).map(|(a, b)| a * b).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let want = dot / (norm(&img) * norm(&txt));
    let scores = r["output"]["scores"].as_array().unwrap();
    let fixture_score = scores.iter().find(|s| s[0] == "fixture").unwrap()[1]
        .as_f64()
        .unwrap();
    assert!(
        (fixture_score - f64::from(want)).abs() < 1e-5,
        "{fixture_score} vs {want}"
    );
    assert_eq!(r["output"]["label"], scores[0][0]);
    assert_eq!(r["path"], 2);
    let modules: Vec<&str> = r["modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["module"].as_str().unwrap())
        .collect();
    assert_eq!(modules, ["img_enc", "txt_enc"]);
    assert_eq!(r["modules"][1]["calls"], 2);
}

#[test]
fn text_generation_starts_with_the_onnxruntime_argmax() {
    let argmax = |logits: &[f32], pos: usize| {
        let row = &logits[pos * 128..(pos + 1) * 128];
        (0..128)
            .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
            .unwrap() as i64
    };
    for (name, fixture_name) in [("text", "llama_prefill"), ("text_adapted", "llama_lora")] {
        let r = task(name, &["--tokens", "37,82,126,126"]);
        let tokens = r["output"]["tokens"].as_array().unwrap();
        assert_eq!(tokens.len(), 3);
        let want = argmax(&expected(fixture_name, "logits"), 3);
        assert_eq!(tokens[0].as_i64(), Some(want), "{name}");
        assert!(r["output"]["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn single_module_and_projection_paths() {
    let audio = fixture("whisper_encoder.inputs.npz");
    let r = task("audio", &["--input", audio.to_str().unwrap()]);
    let got: Vec<f64> = r["output"]["outputs"][0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let want = expected("whisper_encoder", "last_hidden_state");
    assert_eq!(got.len(), want.len());
    assert!(got
        .iter()
        .zip(&want)
        .all(|(g, w)| (g - f64::from(*w)).abs() <= 1e-5 + 1e-4 * f64::from(w.abs())));

    let img = fixture("clip_vision.inputs.npz");
    let r = task("caption", &["--input", img.to_str().unwrap()]);
    let e = expected("clip_vision", "image_embeds");
    let proj = projection();
    let prefix: Vec<i64> = (0..2)
        .map(|k| {
            let score = |v: usize| {
                (0..16)
                    .map(|d| proj[(k * 128 + v) * 16 + d] * e[d])
                    .sum::<f32>()
            };
            (0..128)
                .max_by(|&a, &b| score(a).total_cmp(&score(b)).then(b.cmp(&a)))
                .unwrap() as i64
        })
        .collect();
    let got: Vec<i64> = r["output"]["prefix_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(got, prefix);
    assert_eq!(r["output"]["tokens"].as_array().unwrap().len(), 2);
}

#[test]
fn tasks_run_concurrently_on_one_runner() {
    let dir = setup();
    let runner = m4c_runtime::task::open(&dir.join("M4.fw"), &dir.join("tasks.toml")).unwrap();
    let input = m4c_runtime::task::TaskInput {
        arrays: Default::default(),
        tokens: vec![37, 82, 126, 126],
    };
    let alone = serde_json::to_value(runner.run("text_adapted", &input).unwrap().output).unwrap();
    std::thread::scope(|s| {
        let handles: Vec<_> = ["text", "text_adapted", "text_adapted"]
            .map(|t| {
                let (runner, input) = (&runner, &input);
                s.spawn(move || (t, runner.run(t, input).unwrap()))
            })
            .into_iter()
            .collect();
        for h in handles {
            let (t, r) = h.join().unwrap();
            let out = serde_json::to_value(r.output).unwrap();
            if t == "text_adapted" {
                assert_eq!(out["tokens"], alone["tokens"]);
            }
        }
    });
}

#[test]
fn bad_tasks_and_manifests_exit_2_with_one_line() {
    let dir = setup();
    let fw = dir.join("M4.fw");
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let bad_toml = write(
        "bad.toml",
        "[tasks.a]\npath = 3\ndecoder = \"backbone_decode\"\nmax_new_tokens = [\n",
    );
    let missing_module = write(
        "missing.toml",
        "[tasks.a]\npath = 4\nmodule = \"img_dec\"\n",
    );
    let other_fw_adapter = {
        let other = build_firmware(
            &[("backbone_decode".into(), fixture("llama_decode.onnx"))],
            &FirmwareOptions::default(),
        )
        .unwrap();
        let other = Bundle::from_bytes(&other).unwrap();
        let a = build_adapter(
            &other,
            &["backbone_decode".into()],
            &fixture("llama_lora_adapter"),
            LoraMode::Keep,
        )
        .unwrap();
        write_atomically(&dir.join("other.m4a"), &[], &a).unwrap();
        write(
            "other.toml",
            "[tasks.a]\npath = 3\ndecoder = \"backbone_decode\"\nadapter = \"other.m4a\"\n",
        )
    };
    let good = dir.join("tasks.toml");
    let img = fixture("clip_vision.inputs.npz");
    let cases: Vec<(&Path, &str, Vec<&str>, &str)> = vec![
        (&bad_toml, "a", vec![], "bad.toml: line 5, column 1"),
        (
            &missing_module,
            "a",
            vec![],
            "task `a`: module `img_dec` is not in the firmware",
        ),
        (
            &good,
            "nope",
            vec![],
            "no task `nope` in the manifest (tasks: audio, caption",
        ),
        (
            &other_fw_adapter,
            "a",
            vec!["--tokens", "1"],
            "built for firmware",
        ),
        (
            &good,
            "text",
            vec!["--tokens", "1,500"],
            "token 500 is outside the vocabulary",
        ),
        (
            &good,
            "zero_shot",
            vec![],
            "module `img_enc` needs input 'pixel_values'",
        ),
        (
            &good,
            "audio",
            vec!["--input", img.to_str().unwrap()],
            "module `aud_enc` needs input 'input_features'",
        ),
        (
            Path::new("/nonexistent/tasks.toml"),
            "a",
            vec![],
            "/nonexistent/tasks.toml",
        ),
    ];
    for (manifest, name, extra, want) in cases {
        let mut args = vec![
            "task",
            "run",
            fw.to_str().unwrap(),
            "--manifest",
            manifest.to_str().unwrap(),
            "--task",
            name,
        ];
        args.extend(extra);
        let o = m4c(&args);
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {e}");
        assert!(e.contains(want), "{args:?}: {e}");
        assert_eq!(e.trim().lines().count(), 1, "{args:?}: {e}");
    }
}
