//! `m4c generate` on an optimum-style decoder with past
//! (tests/fixtures/decoder_past.onnx, from scripts/fixtures/decoder_past.py)
//! reproduces onnxruntime's greedy loop token for token, base and with its
//! PEFT adapter, on every backend this host runs, from the ONNX file and
//! through a firmware (`firmware build` + `m4c adapt` + `generate M4.fw`);
//! bad requests are one-line errors with exit 2.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn m4c(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_m4c"))
        .args(args)
        .output()
        .expect("m4c runs")
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("decoder_past.greedy.json")).unwrap())
        .unwrap()
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_i64().unwrap())
        .collect()
}

fn prompt() -> String {
    let p: Vec<String> = ids(&expected()["prompt"])
        .iter()
        .map(i64::to_string)
        .collect();
    p.join(",")
}

fn runnable_backends() -> Vec<String> {
    m4c_backends::all()
        .iter()
        .filter(|b| m4c_backends::runnable(**b, None).is_ok())
        .map(|b| b.name().to_string())
        .collect()
}

/// `m4c generate ... --json`, checked to succeed.
fn generate(model: &Path, extra: &[&str]) -> Value {
    let (p, n) = (prompt(), expected()["max_new_tokens"].to_string());
    let mut args = vec![
        "generate",
        model.to_str().unwrap(),
        "--prompt-ids",
        &p,
        "--max-new-tokens",
        &n,
        "--json",
    ];
    args.extend(extra);
    let out = m4c(&args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn one_line_error(out: &Output, wants: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains(wants), "wanted `{wants}` in: {err}");
}

#[test]
fn onnx_decoder_reproduces_onnxruntime_greedy_base_and_adapter() {
    let want = expected();
    let model = fixture("decoder_past.onnx");
    let adapter = fixture("decoder_past_adapter");
    for backend in runnable_backends() {
        let base = generate(&model, &["--backend", &backend]);
        assert_eq!(ids(&base["tokens"]), ids(&want["base"]), "{backend}");
        assert_eq!(
            base["prefill_calls"], 1,
            "{backend}: the prompt in one call"
        );
        assert_eq!(base["stopped"], "max_tokens");
        assert!(base["ttft_ms"].as_f64().unwrap() > 0.0);
        assert!(base["tokens_per_s"].as_f64().unwrap() > 0.0);
        let lora = generate(
            &model,
            &[
                "--backend",
                &backend,
                "--adapter",
                adapter.to_str().unwrap(),
            ],
        );
        assert_eq!(ids(&lora["tokens"]), ids(&want["lora"]), "{backend}");
    }
}

/// A decoder without attention_mask and position_ids, with
/// `past_key_{i}`/`present_key_{i}` names (the same weights): decoded with
/// a specialisation per past length, the same tokens.
#[test]
fn a_decoder_without_mask_or_positions_generates_the_same_tokens() {
    let model = fixture("decoder_past_bare.onnx");
    for backend in runnable_backends() {
        let g = generate(&model, &["--backend", &backend]);
        assert_eq!(ids(&g["tokens"]), ids(&expected()["base"]), "{backend}");
        assert_eq!(g["prefill_calls"], 1);
    }
}

/// A temporary directory of this test process.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("m4c-gen-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A firmware with the decoder's decode module (`backbone`, S = 1, P = 15)
/// and a prefill bucket (`backbone_prefill`, S = 8, P = 0) from the same
/// model, signed, for `backend` (with `slots`: `--lora-slots`); and the
/// adapter packed for it.
fn firmware(dir: &Path, backend: &str, slots: Option<&str>) -> (PathBuf, PathBuf, PathBuf) {
    let (fw, key, app) = (dir.join("M4.fw"), dir.join("key"), dir.join("app.m4a"));
    let ok = |out: Output| {
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        )
    };
    ok(m4c(&["keygen", "-o", key.to_str().unwrap()]));
    let model = fixture("decoder_past.onnx");
    let model = model.to_str().unwrap();
    let slot_args = slots.map_or(vec![], |s| vec!["--lora-slots", s]);
    ok(m4c(&[
        &["firmware", "build"][..],
        &slot_args,
        &[
            "--module",
            &format!("backbone={model}"),
            "--module",
            &format!("backbone_prefill={model}"),
            "--dim",
            "sequence_length=1",
            "--dim",
            "past_sequence_length=15",
            "--module-dim",
            "backbone_prefill:sequence_length=8",
            "--module-dim",
            "backbone_prefill:past_sequence_length=0",
            "--backend",
            backend,
            "--sign-key",
            key.to_str().unwrap(),
            "-o",
            fw.to_str().unwrap(),
        ],
    ]
    .concat()));
    ok(m4c(&[
        "adapt",
        fw.to_str().unwrap(),
        "--module",
        "backbone",
        "--module",
        "backbone_prefill",
        "--adapter",
        fixture("decoder_past_adapter").to_str().unwrap(),
        "-o",
        app.to_str().unwrap(),
    ]));
    (fw, dir.join("key.pub"), app)
}

#[test]
fn firmware_decoder_reproduces_onnxruntime_greedy_base_and_adapter() {
    let want = expected();
    for backend in runnable_backends() {
        let dir = TempDir::new(&backend);
        let (fw, public, app) = firmware(&dir.0, &backend, None);
        let trust = [
            "--trust-key",
            public.to_str().unwrap(),
            "--module",
            "backbone",
        ];
        let base = generate(&fw, &trust);
        assert_eq!(ids(&base["tokens"]), ids(&want["base"]), "{backend}");
        assert_eq!(base["prefill_calls"], 1, "{backend}: the prefill bucket");
        if backend != "reference" {
            let engine = base["engine"].as_str().unwrap();
            assert!(
                engine.contains(&format!("`backbone`: {backend}")),
                "{engine}"
            );
        }
        let mut with_app = trust.to_vec();
        with_app.extend(["--adapter", app.to_str().unwrap()]);
        let lora = generate(&fw, &with_app);
        assert_eq!(ids(&lora["tokens"]), ids(&want["lora"]), "{backend}");
        let mut too_long = trust.to_vec();
        too_long.extend(["--max-context", "17"]);
        let (p, fwp) = (prompt(), fw.to_str().unwrap().to_string());
        let mut args = vec![
            "generate",
            &fwp,
            "--prompt-ids",
            &p,
            "--max-new-tokens",
            "2",
        ];
        args.extend(too_long);
        one_line_error(
            &m4c(&args),
            "serves a context of at most 16 tokens, 17 asked",
        );
        // The adapted decode module reproduces onnxruntime on the LoRA
        // model (its outputs keep the model's names: present.*).
        let out = m4c(&[
            "run",
            fw.to_str().unwrap(),
            "--module",
            "backbone",
            "--adapter",
            app.to_str().unwrap(),
            "--trust-key",
            public.to_str().unwrap(),
            "--inputs",
            fixture("decoder_past_lora.inputs.npz").to_str().unwrap(),
            "--expect",
            fixture("decoder_past_lora.expected.npz").to_str().unwrap(),
        ]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{backend}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// With LoRA slots the compiled code runs with the adapter attached
/// (`--engine compiled`), reproducing onnxruntime's greedy tokens and the
/// LoRA model's outputs; without an adapter the slots hold zeros and the
/// base tokens come out.
#[test]
fn compiled_firmware_with_lora_slots_runs_the_adapter() {
    let compiled: Vec<String> = runnable_backends()
        .into_iter()
        .filter(|b| b != "reference")
        .collect();
    let want = expected();
    for backend in compiled {
        let dir = TempDir::new(&format!("slots-{backend}"));
        let (fw, public, app) = firmware(&dir.0, &backend, Some("q_proj,v_proj:8"));
        let trust = [
            "--trust-key",
            public.to_str().unwrap(),
            "--module",
            "backbone",
            "--engine",
            "compiled",
        ];
        let base = generate(&fw, &trust);
        assert_eq!(ids(&base["tokens"]), ids(&want["base"]), "{backend}");
        let mut with_app = trust.to_vec();
        with_app.extend(["--adapter", app.to_str().unwrap()]);
        let lora = generate(&fw, &with_app);
        assert_eq!(ids(&lora["tokens"]), ids(&want["lora"]), "{backend}");
        let engine = lora["engine"].as_str().unwrap();
        assert!(
            engine.contains(&format!("`backbone`: {backend}")),
            "{engine}"
        );
        let out = m4c(&[
            "run",
            fw.to_str().unwrap(),
            "--module",
            "backbone",
            "--adapter",
            app.to_str().unwrap(),
            "--engine",
            "compiled",
            "--trust-key",
            public.to_str().unwrap(),
            "--inputs",
            fixture("decoder_past_lora.inputs.npz").to_str().unwrap(),
            "--expect",
            fixture("decoder_past_lora.expected.npz").to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{backend}: {err}");
        assert!(err.contains("compiled code"), "{err}");
    }
}

#[test]
fn adapters_that_do_not_fit_the_slots_are_refused() {
    let dir = TempDir::new("slot-misfit");
    let fw = dir.0.join("M4.fw");
    let model = fixture("decoder_past.onnx");
    let out = m4c(&[
        "firmware",
        "build",
        "--module",
        &format!("backbone={}", model.display()),
        "--dim",
        "sequence_length=1",
        "--dim",
        "past_sequence_length=15",
        "--dim",
        "total_sequence_length=16",
        "--lora-slots",
        "q_proj:2",
        "-o",
        fw.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = m4c(&[
        "adapt",
        fw.to_str().unwrap(),
        "--module",
        "backbone",
        "--adapter",
        fixture("decoder_past_adapter").to_str().unwrap(),
        "-o",
        dir.0.join("app.m4a").to_str().unwrap(),
    ]);
    one_line_error(&out, "adapter rank 4 exceeds the slot's rank 2");
    one_line_error(&out, "v_proj: the firmware module has no LoRA slot");
    assert!(!dir.0.join("app.m4a").exists());
    let out = m4c(&[
        "firmware",
        "build",
        "--module",
        &format!("backbone={}", model.display()),
        "--lora-slots",
        "nothing_proj:4",
        "--default-dim",
        "1",
        "-o",
        dir.0.join("none.fw").to_str().unwrap(),
    ]);
    one_line_error(&out, "--lora-slots: no MatMul of any module");
}

#[test]
fn a_full_context_stops_with_a_line_never_silently() {
    let model = fixture("decoder_past.onnx");
    let out = m4c(&[
        "generate",
        model.to_str().unwrap(),
        "--prompt-ids",
        &prompt(),
        "--max-new-tokens",
        "10",
        "--max-context",
        "8",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("stopped: context full at 8 tokens"), "{text}");
    // 6 prompt tokens: the first new token from the prefill, two more fed
    // back fill the 8 positions, the third from the last step.
    let first = text.lines().next().unwrap();
    let want: Vec<String> = ids(&expected()["base"])[..3]
        .iter()
        .map(i64::to_string)
        .collect();
    assert_eq!(first.split_whitespace().collect::<Vec<_>>(), want);
}

#[test]
fn stop_id_and_sampling_are_honoured() {
    let model = fixture("decoder_past.onnx");
    let base = ids(&expected()["base"]);
    let stop = base[2].to_string();
    let g = generate(&model, &["--stop-id", &stop]);
    assert_eq!(ids(&g["tokens"]), base[..3].to_vec());
    assert_eq!(g["stopped"], "stop_token");
    let a = generate(
        &model,
        &["--top-k", "8", "--temperature", "0.9", "--seed", "5"],
    );
    let b = generate(
        &model,
        &["--top-k", "8", "--temperature", "0.9", "--seed", "5"],
    );
    assert_eq!(a["tokens"], b["tokens"], "a seed repeats a run");
}

#[test]
fn bad_requests_are_one_line_errors() {
    let model = fixture("decoder_past.onnx");
    let m = model.to_str().unwrap();
    let gen = |extra: &[&str]| {
        let mut args = vec!["generate", m, "--max-new-tokens", "4"];
        args.extend(extra);
        m4c(&args)
    };
    one_line_error(
        &gen(&["--prompt-ids", "1,2,3,4,5", "--max-context", "4"]),
        "the prompt has 5 tokens, more than the context of 4",
    );
    one_line_error(
        &gen(&["--prompt-ids", "1,64"]),
        "token 64 is outside the vocabulary (0..64)",
    );
    one_line_error(
        &gen(&["--prompt-ids", "1,-3"]),
        "token -3 is outside the vocabulary",
    );
    one_line_error(
        &m4c(&[
            "--max-memory",
            "100M",
            "generate",
            m,
            "--prompt-ids",
            "1,2",
            "--max-new-tokens",
            "2",
            "--max-context",
            "500000",
        ]),
        "KV cache: a tensor of shape [4, 1, 2, 499999, 8]",
    );
    let dir = TempDir::new("prompt-file");
    let bad = dir.0.join("bad.txt");
    std::fs::write(&bad, "5, 17\n42 x").unwrap();
    one_line_error(
        &gen(&["--prompt-file", bad.to_str().unwrap()]),
        "'x' is not a token id",
    );
    let good = dir.0.join("good.txt");
    std::fs::write(&good, prompt().replace(',', "\n")).unwrap();
    let out = m4c(&[
        "generate",
        m,
        "--prompt-file",
        good.to_str().unwrap(),
        "--max-new-tokens",
        "10",
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let g: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ids(&g["tokens"]), ids(&expected()["base"]));
    let encoder = fixture("clip_text.onnx");
    let out = m4c(&[
        "generate",
        encoder.to_str().unwrap(),
        "--prompt-ids",
        "1,2",
        "--max-new-tokens",
        "2",
    ]);
    one_line_error(&out, "not a decoder with past");
}

#[test]
fn inspect_binds_a_decoders_lengths_consistently() {
    let model = fixture("decoder_past.onnx");
    let out = m4c(&["inspect", model.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let d = &doc["symbolic_dims"];
    assert_eq!(d["total_sequence_length"], 2, "{d}");
    let out = m4c(&[
        "inspect",
        model.to_str().unwrap(),
        "--json",
        "--dim",
        "past_sequence_length=9",
    ]);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["symbolic_dims"]["total_sequence_length"], 10);
}

/// `adapter info` describes the .m4a; `bench` times a bundle's module
/// without and with the adapter (switched in without a reload).
#[test]
fn adapter_info_and_bench_of_a_bundle() {
    let backend = if runnable_backends().contains(&"cpu".to_string()) {
        "cpu"
    } else {
        "reference"
    };
    let dir = TempDir::new("info");
    let (fw, public, app) = firmware(&dir.0, backend, Some("q_proj,v_proj:8"));
    let out = m4c(&["adapter", "info", app.to_str().unwrap(), "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    let sites = info["sites"].as_array().unwrap();
    assert_eq!(sites.len(), 4);
    assert!(sites.iter().all(|s| s["rank"] == 4 && s["scale"] == 2.0));
    assert_eq!(
        info["modules"],
        serde_json::json!(["backbone", "backbone_prefill"])
    );
    let fw_info = m4c(&["firmware", "info", fw.to_str().unwrap()]);
    let fw_text = String::from_utf8_lossy(&fw_info.stdout);
    assert!(
        fw_text.contains(info["firmware"].as_str().unwrap()),
        "{fw_text}"
    );
    one_line_error(
        &m4c(&["adapter", "info", fw.to_str().unwrap()]),
        "expected kind `adapter`",
    );
    let out = m4c(&[
        "bench",
        fw.to_str().unwrap(),
        "--module",
        "backbone",
        "--adapter",
        app.to_str().unwrap(),
        "--trust-key",
        public.to_str().unwrap(),
        "--inputs",
        fixture("decoder_past.inputs.npz").to_str().unwrap(),
        "--runs",
        "3",
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["median_ms"].as_f64().unwrap() > 0.0);
    assert!(r["base_median_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(r["slots"], true);
    let a = &r["adapters"][0];
    assert_eq!(a["engine"], backend);
    // Rank-8 slots, f32: (32·8 + 8·32) per q_proj and (32·8 + 8·16) per
    // v_proj, two layers.
    assert_eq!(a["resident_bytes"], 4 * 2 * (512 + 384));
}
