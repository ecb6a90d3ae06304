//! Firmware bundles end to end: five fixture models lowered into one
//! bundle reproduce onnxruntime's outputs when loaded back (weights
//! mapped from the bundle), rebuilds are byte-identical, shared weights are
//! stored once; `m4c firmware build/info` and their errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use m4c_compiler::bundle::{build_firmware, FirmwareOptions};
use m4c_ops::{compare, run_graph, Value};
use m4c_runtime::bundle::Bundle;
use m4c_runtime::{read_npz, sanitized_key};

/// (module name, fixture) of the paper's M4 modules.
const MODULES: [(&str, &str); 5] = [
    ("txt_enc", "clip_text"),
    ("img_enc", "clip_vision"),
    ("imu_enc", "imu_encoder"),
    ("aud_enc", "whisper_encoder"),
    ("backbone", "llama_prefill"),
];

/// A fresh directory removed when dropped (the root package has no
/// tempfile dependency).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("m4c-cli-firmware-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn module_list() -> Vec<(String, PathBuf)> {
    MODULES
        .iter()
        .map(|(m, f)| (m.to_string(), fixture(&format!("{f}.onnx"))))
        .collect()
}

/// The five-module firmware, built once per test binary.
fn firmware() -> &'static [u8] {
    static FW: OnceLock<Vec<u8>> = OnceLock::new();
    FW.get_or_init(|| build_firmware(&module_list(), &FirmwareOptions::default()).unwrap())
}

fn lookup<'a>(arrays: &'a BTreeMap<String, Value>, name: &str) -> &'a Value {
    arrays
        .get(name)
        .or_else(|| arrays.get(&sanitized_key(name)))
        .unwrap_or_else(|| panic!("no array {name} in {:?}", arrays.keys()))
}

/// numpy.allclose(got, want, rtol=1e-4, atol=1e-5), shapes and types equal.
fn assert_allclose(what: &str, got: &Value, want: &Value) {
    assert_eq!(got.dtype(), want.dtype(), "{what}: element type");
    let c = compare(got, want, 1e-4, 1e-5);
    assert!(c.passed(), "{what}: {}", c.summary());
}

#[test]
fn every_module_of_the_firmware_reproduces_onnxruntime() {
    let dir = TempDir::new();
    let path = dir.0.as_path().join("M4.fw");
    m4c_compiler::bundle::write_atomically(&path, &[], firmware()).unwrap();
    let fw = Bundle::open(&path).unwrap();
    let mut names: Vec<&str> = MODULES.iter().map(|(m, _)| *m).collect();
    names.sort();
    assert_eq!(fw.modules().collect::<Vec<_>>(), names);
    for (module, fixture_name) in MODULES {
        let g = fw.module(module).unwrap();
        let mapped = g
            .constants()
            .filter(|&c| g.constant(c).unwrap().is_mapped())
            .count();
        assert!(mapped > 0, "{module}: no mapped weights");
        for c in g.constants() {
            let t = g.constant(c).unwrap();
            assert!(
                t.is_mapped() || t.len() <= m4c_ir::text::INLINE_LIMIT,
                "{module}: %{} ({} elements) was copied, not mapped",
                g.value(c).name,
                t.len()
            );
        }
        let inputs = read_npz(&fixture(&format!("{fixture_name}.inputs.npz"))).unwrap();
        let expected = read_npz(&fixture(&format!("{fixture_name}.expected.npz"))).unwrap();
        let feeds: Vec<Value> = g
            .inputs
            .iter()
            .map(|&i| lookup(&inputs, &g.value(i).name).clone())
            .collect();
        let outputs = run_graph(&g, &feeds).unwrap();
        for (&o, got) in g.outputs.iter().zip(&outputs) {
            let name = &g.value(o).name;
            assert_allclose(&format!("{module}.{name}"), got, lookup(&expected, name));
        }
    }
}

#[test]
fn rebuilding_gives_identical_bytes_whatever_the_module_order() {
    let mut reversed = module_list();
    reversed.reverse();
    let again = build_firmware(&reversed, &FirmwareOptions::default()).unwrap();
    assert!(again == firmware(), "rebuild differs");
}

#[test]
fn shared_weights_are_stored_once() {
    let onnx = fixture("llama_prefill.onnx");
    let onnx_len = std::fs::metadata(&onnx).unwrap().len() as usize;
    let one = build_firmware(&[("a".into(), onnx.clone())], &FirmwareOptions::default()).unwrap();
    let two = build_firmware(
        &[("a".into(), onnx.clone()), ("b".into(), onnx)],
        &FirmwareOptions::default(),
    )
    .unwrap();
    let weights_len = |bytes: &[u8]| {
        let b = Bundle::from_bytes(bytes).unwrap();
        b.manifest().sections[0].len
    };
    assert_eq!(weights_len(&one), weights_len(&two));
    assert!(two.len() < 2 * onnx_len, "{} ≥ 2 × {onnx_len}", two.len());
    // The second module adds only its IR text and manifest entries.
    assert!(two.len() - one.len() < one.len() / 2);
}

fn m4c(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_m4c"))
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn cli_builds_and_shows_a_firmware() {
    let dir = TempDir::new();
    let out = dir.0.as_path().join("M4.fw");
    let text = fixture("clip_text.onnx");
    let llama = fixture("llama_prefill.onnx");
    let o = m4c(&[
        "firmware",
        "build",
        "--module",
        &format!("txt_enc={}", text.display()),
        "--module",
        &format!("backbone={}", llama.display()),
        "--backend",
        "reference",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("content hash"), "{stdout}");
    let fw = Bundle::open(&out).unwrap();
    assert_eq!(fw.modules().collect::<Vec<_>>(), ["backbone", "txt_enc"]);
    let o = m4c(&["firmware", "info", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&fw.content_hash_hex()));
}

#[test]
fn cli_errors_exit_2_and_leave_nothing_behind() {
    let dir = TempDir::new();
    let out = dir.0.as_path().join("M4.fw");
    let out_s = out.to_str().unwrap();
    let text = format!("txt_enc={}", fixture("clip_text.onnx").display());
    let cases: [(Vec<&str>, &str); 4] = [
        (
            vec!["--module", "txt_enc=/nonexistent/model.onnx"],
            "module `txt_enc`: /nonexistent/model.onnx",
        ),
        (
            vec!["--module", &text, "--module", &text],
            "module `txt_enc` is given twice",
        ),
        (
            vec!["--module", "bad name=x.onnx"],
            "module name \"bad name\" is invalid",
        ),
        (
            vec!["--module", &text, "--backend", "tpu"],
            "unknown backend `tpu`",
        ),
    ];
    for (args, want) in cases {
        let mut full = vec!["firmware", "build", "-o", out_s];
        full.extend(args);
        let o = m4c(&full);
        assert_eq!(o.status.code(), Some(2), "{full:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(want), "{full:?}: {}", stderr(&o));
        assert_eq!(
            std::fs::read_dir(dir.0.as_path()).unwrap().count(),
            0,
            "{full:?} left a file"
        );
    }
}

#[test]
fn cli_info_on_a_damaged_bundle_names_the_section() {
    let dir = TempDir::new();
    let path = dir.0.as_path().join("M4.fw");
    let mut bytes = firmware().to_vec();
    let fw = Bundle::from_bytes(&bytes).unwrap();
    let ir = fw.manifest().sections.last().unwrap().clone();
    bytes[(ir.offset + ir.len / 2) as usize] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let o = m4c(&["firmware", "info", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let want = format!("checksum mismatch in section ir `{}`", ir.name);
    assert!(stderr(&o).contains(&want), "{}", stderr(&o));
    std::fs::write(&path, &bytes[..1000]).unwrap();
    let o = m4c(&["firmware", "info", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("truncated"), "{}", stderr(&o));
}

/// The firmware written to `dir` and the fixture adapter packed for its
/// backbone as `app.m4a` with `lora`.
fn firmware_and_adapter(dir: &TempDir, lora: &str) -> (PathBuf, PathBuf) {
    let (fw, app) = (dir.0.join("M4.fw"), dir.0.join(format!("{lora}.m4a")));
    m4c_compiler::bundle::write_atomically(&fw, &[], firmware()).unwrap();
    let peft = fixture("llama_lora_adapter");
    let o = m4c(&[
        "adapt",
        fw.to_str().unwrap(),
        "--module",
        "backbone",
        "--adapter",
        peft.to_str().unwrap(),
        "--lora",
        lora,
        "-o",
        app.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    (fw, app)
}

/// `m4c run M4.fw --module backbone [--adapter APP.m4a]` against a fixture's
/// expected outputs; the exit code.
fn run_backbone(fw: &Path, adapters: &[&Path], fixture_name: &str, expect: &str) -> Output {
    let (inputs, expect) = (
        fixture(&format!("{fixture_name}.inputs.npz")),
        fixture(&format!("{expect}.expected.npz")),
    );
    let mut args = vec![
        "run".to_string(),
        fw.display().to_string(),
        "--module".into(),
        "backbone".into(),
        "--inputs".into(),
        inputs.display().to_string(),
        "--expect".into(),
        expect.display().to_string(),
    ];
    for a in adapters {
        args.extend(["--adapter".to_string(), a.display().to_string()]);
    }
    m4c(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn firmware_plus_adapter_bundle_reproduces_the_lora_model() {
    let dir = TempDir::new();
    for lora in ["keep", "fold"] {
        let (fw, app) = firmware_and_adapter(&dir, lora);
        let o = run_backbone(&fw, &[&app], "llama_lora", "llama_lora");
        assert_eq!(
            o.status.code(),
            Some(0),
            "{lora}: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        // The adapter is what makes the difference.
        let o = run_backbone(&fw, &[&app], "llama_prefill", "llama_prefill");
        assert_eq!(
            o.status.code(),
            Some(1),
            "{lora}: the adapter changed nothing"
        );
    }
    let fw = dir.0.join("M4.fw");
    let o = run_backbone(&fw, &[], "llama_prefill", "llama_prefill");
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn an_adapter_bundle_is_small_deterministic_and_bound_to_its_firmware() {
    let dir = TempDir::new();
    let (fw, app) = firmware_and_adapter(&dir, "keep");
    let first = std::fs::read(&app).unwrap();
    let (_, again) = firmware_and_adapter(&dir, "keep");
    assert!(std::fs::read(again).unwrap() == first, "rebuild differs");
    // Factors only: 4 sites × (8×64 + 64×8 or 32×8) f32, far below the
    // firmware's backbone weights.
    assert!(first.len() < 20_000, "{} bytes", first.len());
    assert!(first.len() * 20 < std::fs::metadata(&fw).unwrap().len() as usize);
    // Another firmware (one module fewer) refuses it.
    let other = dir.0.join("other.fw");
    let two = build_firmware(&module_list()[3..], &FirmwareOptions::default()).unwrap();
    m4c_compiler::bundle::write_atomically(&other, &[], &two).unwrap();
    let o = run_backbone(&other, &[&app], "llama_lora", "llama_lora");
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("built for firmware") && e.contains("m4c adapt"),
        "{e}"
    );
    assert_eq!(e.trim().lines().count(), 1, "{e}");
}

#[test]
fn adapter_errors_exit_2_with_one_line() {
    let dir = TempDir::new();
    let (fw, app) = firmware_and_adapter(&dir, "keep");
    let good = std::fs::read(&app).unwrap();
    let damaged = |name: &str, bytes: &[u8]| {
        let p = dir.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let truncated = damaged("truncated.m4a", &good[..good.len() - 10]);
    let mut flipped = good.clone();
    *flipped.last_mut().unwrap() ^= 0x40;
    let flipped = damaged("flipped.m4a", &flipped);
    let peft = fixture("llama_lora_adapter");
    let (fw_s, app_s, peft_s) = (
        fw.to_str().unwrap(),
        app.to_str().unwrap(),
        peft.to_str().unwrap(),
    );
    let lora_in = fixture("llama_lora.inputs.npz");
    let lora_in = lora_in.to_str().unwrap();
    let onnx = fixture("llama_prefill.onnx");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "run",
                fw_s,
                "--module",
                "backbone",
                "--inputs",
                lora_in,
                "--adapter",
                truncated.to_str().unwrap(),
            ],
            "truncated: section weights",
        ),
        (
            vec![
                "run",
                fw_s,
                "--module",
                "backbone",
                "--inputs",
                lora_in,
                "--adapter",
                flipped.to_str().unwrap(),
            ],
            "checksum mismatch in section weights",
        ),
        (
            vec![
                "run",
                fw_s,
                "--module",
                "backbone",
                "--inputs",
                lora_in,
                "--adapter",
                peft_s,
            ],
            "is a PEFT directory",
        ),
        (
            vec![
                "run",
                fw_s,
                "--module",
                "backbone",
                "--inputs",
                lora_in,
                "--adapter",
                fw_s,
            ],
            "kind `firmware`, expected kind `adapter`",
        ),
        (
            vec!["run", app_s, "--module", "backbone", "--inputs", lora_in],
            "kind `adapter`, expected kind `firmware`",
        ),
        (
            vec![
                "run",
                fw_s,
                "--module",
                "backbone",
                "--inputs",
                lora_in,
                "--adapter",
                app_s,
                "--lora",
                "fold",
            ],
            "--lora applies to ONNX models",
        ),
        (
            vec![
                "run",
                onnx.to_str().unwrap(),
                "--inputs",
                lora_in,
                "--adapter",
                app_s,
            ],
            "is an adapter bundle",
        ),
        (
            vec![
                "run",
                fw_s,
                "--module",
                "img_enc",
                "--inputs",
                lora_in,
                "--adapter",
                app_s,
            ],
            "does not fit module `img_enc`",
        ),
        (
            vec![
                "adapt",
                fw_s,
                "--module",
                "nope",
                "--adapter",
                peft_s,
                "-o",
                "/tmp/never.m4a",
            ],
            "no module `nope`",
        ),
        (
            vec![
                "adapt",
                fw_s,
                "--module",
                "txt_enc",
                "--adapter",
                peft_s,
                "-o",
                "/tmp/never.m4a",
            ],
            "no MatMul carries this module name",
        ),
    ];
    for (args, want) in cases {
        let o = m4c(&args);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {e}");
        assert!(e.contains(want), "{args:?}: {e}");
        assert!(!e.contains("panicked"), "{args:?}: {e}");
        assert_eq!(e.trim().lines().count(), 1, "{args:?}: {e}");
    }
    // A usage error (clap's format: the error line, then a hint).
    let o = m4c(&[
        "adapt",
        fw_s,
        "--module",
        "backbone",
        "--adapter",
        peft_s,
        "--lora",
        "auto",
        "-o",
        "/tmp/never.m4a",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unknown LoRA mode 'auto' (known: keep, fold)"),
        "{}",
        stderr(&o)
    );
    assert!(!Path::new("/tmp/never.m4a").exists());
}

#[test]
fn scale_report_measures_storage_and_peak_rss_from_the_os() {
    let dir = TempDir::new();
    let (fw, app) = firmware_and_adapter(&dir, "keep");
    let out = dir.0.join("report");
    let ts = fixture("imu_encoder.onnx");
    let o = m4c(&[
        "scale-report",
        "--firmware",
        fw.to_str().unwrap(),
        "--adapter",
        app.to_str().unwrap(),
        "--ts",
        ts.to_str().unwrap(),
        "--max-n",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("scale.json")).unwrap()).unwrap();
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let len = |p: &Path| std::fs::metadata(p).unwrap().len();
    for (i, r) in rows.iter().enumerate() {
        let n = i as u64 + 1;
        assert_eq!(r["m4_storage_bytes"], len(&fw) + n * len(&app));
        for k in ["m4_peak_rss_bytes", "ts_peak_rss_bytes"] {
            assert!(
                r[k].as_u64().unwrap() > json["baseline_rss_bytes"].as_u64().unwrap(),
                "{k}"
            );
        }
    }
    assert!(rows[1]["ts_storage_bytes"] == 2 * rows[0]["ts_storage_bytes"].as_u64().unwrap());
    assert!(std::fs::read_to_string(out.join("scale.svg"))
        .unwrap()
        .contains("<polyline"));
    assert!(std::fs::read_to_string(out.join("scale.md"))
        .unwrap()
        .contains("| 2 |"));
    assert!(!out.join("files").exists());
}
