//! NPU code in firmware bundles: `m4c firmware build --backend npu`
//! calibrates each module on the `.npz` beside its model (or
//! `--calibrate`) and packs its programs, plan and CPU-fallback code; `m4c
//! run M4.fw` runs them on the runtime's NPU device within cosine 0.99 of
//! onnxruntime's fp32 outputs (the bound `tests/npu_backend.rs` holds `run
//! --backend npu` to), giving the very outputs of `run --backend npu`.
//! Trust: NPU programs are data the simulator runs, so an unsigned (or
//! untrusted) bundle still runs them, its CPU-fallback parts (native code)
//! on the interpreter with one note saying why; `--engine compiled` then
//! refuses it. Missing calibration data and tampered NPU sections are one
//! error line each.

mod common;
#[path = "common/firmware.rs"]
mod sandbox;
use common::{fixture, text};

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use m4c_runtime::bundle::format::SectionKind;
use m4c_runtime::bundle::sign;

/// (module name, fixture, CPU-fallback parts it has on edge-small,
/// whether `run MODEL --backend npu` compiles the same graph): a
/// transformer encoder and a decoder whose mask construction falls back
/// (its embedding Gather is an NPU row copy). Firmware keeps adapter sites when it
/// optimises (`OptOptions::keep_adapter_sites`, so that an app's adapter
/// can attach) and `run` does not; for the decoder that gives another
/// optimised graph, hence other activation scales.
const MODULES: [(&str, &str, usize, bool); 2] = [
    ("imu", "imu_encoder", 1, true),
    ("lm", "llama_prefill", 3, false),
];

/// The cosine bound `tests/npu_backend.rs` runs these fixtures to.
const MIN_COSINE: f64 = 0.99;

fn scratch(name: &str) -> PathBuf {
    sandbox::scratch("npu_firmware", name)
}

/// Runs `m4c` trusting nothing.
fn m4c(args: &[&str]) -> Output {
    sandbox::m4c_trusting(args, sandbox::empty_trust_dir("npu_firmware"))
}

/// The test signing key: the secret key file and the public one.
fn key() -> &'static (PathBuf, PathBuf) {
    sandbox::key("npu_firmware")
}

/// The firmware of [`MODULES`] for the NPU, signed with [`key`], built
/// once per test binary (calibrated on the `.inputs.npz` beside each
/// model), and what the build printed.
fn firmware() -> &'static (PathBuf, String) {
    static FW: OnceLock<(PathBuf, String)> = OnceLock::new();
    FW.get_or_init(|| {
        let out = scratch("M4.fw");
        let mut args = vec!["firmware".to_string(), "build".into()];
        for (m, f, _, _) in MODULES {
            args.push("--module".into());
            args.push(format!("{m}={}", fixture(&format!("{f}.onnx")).display()));
        }
        args.extend(["--backend", "npu", "--sign-key"].map(String::from));
        args.push(key().0.display().to_string());
        args.push("-o".into());
        args.push(out.display().to_string());
        let o = m4c(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        (out, text(&o))
    })
}

/// The firmware's bytes without its signature trailer: the sealed image
/// exactly as an unsigned build writes it.
fn unsigned_bytes() -> Vec<u8> {
    let bytes = std::fs::read(&firmware().0).unwrap();
    let image = &bytes[..bytes.len() - sign::TRAILER_LEN];
    assert!(bytes[image.len()..].starts_with(&sign::TRAILER_MAGIC));
    image.to_vec()
}

fn scratch_file(name: &str, bytes: &[u8]) -> PathBuf {
    let path = scratch(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// `m4c run FW --module M` on fixture `f`'s inputs, judged against its
/// onnxruntime outputs by cosine, writing the outputs to `out`.
fn run_bundle(fw: &Path, module: &str, f: &str, out: &Path, extra: &[&str]) -> Output {
    let inputs = fixture(&format!("{f}.inputs.npz"));
    let expect = fixture(&format!("{f}.expected.npz"));
    let cosine = MIN_COSINE.to_string();
    let mut args = vec![
        "run",
        fw.to_str().unwrap(),
        "--module",
        module,
        "--inputs",
        inputs.to_str().unwrap(),
        "--expect",
        expect.to_str().unwrap(),
        "--min-cosine",
        &cosine,
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend(extra);
    m4c(&args)
}

/// Checks every output in `out` against fixture `f`'s onnxruntime
/// outputs: cosine at least [`MIN_COSINE`] (computed here, not taken
/// from the CLI's verdict).
fn assert_matches_onnxruntime(out: &Path, f: &str) {
    let got = m4c_runtime::read_npz(out).unwrap();
    let want = m4c_runtime::read_npz(&fixture(&format!("{f}.expected.npz"))).unwrap();
    assert!(!got.is_empty());
    for (name, g) in &got {
        let c = m4c_ops::compare(g, &want[name], 0.0, 0.0);
        assert!(c.shape_error.is_none(), "{f} {name}: {}", c.summary());
        assert!(c.cosine >= MIN_COSINE, "{f} {name}: {}", c.summary());
    }
}

/// The `note:` lines of an output's stderr.
fn notes(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter(|l| l.starts_with("note: "))
        .map(String::from)
        .collect()
}

/// Signed and trusted, each module runs its NPU programs and its compiled
/// CPU-fallback parts, within cosine 0.99 of onnxruntime, and gives
/// exactly what `m4c run MODEL --backend npu` gives.
#[test]
fn a_trusted_bundle_runs_npu_and_compiled_fallback_parts() {
    let (fw, build) = firmware();
    for (m, f, _, _) in MODULES {
        let beside = fixture(&format!("{f}.inputs.npz"));
        let note = format!(
            "note: module `{m}`: calibrating NPU activation ranges on {}",
            beside.display()
        );
        assert_eq!(build.matches(&note).count(), 1, "{build}");
    }
    let info = m4c(&["firmware", "info", fw.to_str().unwrap()]);
    let t = text(&info);
    assert_eq!(info.status.code(), Some(0), "{t}");
    for (m, _, fallback, _) in MODULES {
        let line = format!("  code {m}.edge-small: NPU config edge-small, ");
        let listed = t.lines().find(|l| l.starts_with(&line));
        let listed = listed.unwrap_or_else(|| panic!("{m}: {t}"));
        assert!(
            listed.ends_with(&format!(
                " {fallback} CPU-fallback part(s) ({fallback} native)"
            )),
            "{listed}"
        );
    }
    let trust = ["--trust-key", key().1.to_str().unwrap()];
    for (m, f, fallback, same) in MODULES {
        let out = scratch(&format!("{m}-trusted.npz"));
        let o = run_bundle(
            fw,
            m,
            f,
            &out,
            &[&trust[..], &["--engine", "compiled"]].concat(),
        );
        let t = text(&o);
        assert_eq!(o.status.code(), Some(0), "{m}: {t}");
        assert!(!t.contains("FAIL"), "{t}");
        assert!(
            t.contains(&format!("module `{m}`: compiled code (npu)")),
            "{t}"
        );
        let engines = "CPU-fallback part(s) compiled, 0 on the interpreter";
        let note = notes(&o);
        assert_eq!(note.len(), 1, "{t}");
        assert!(note[0].starts_with("note: npu:edge-small: "), "{t}");
        assert!(note[0].contains(&format!(" {fallback} {engines}")), "{t}");
        assert_matches_onnxruntime(&out, f);
        if !same {
            std::fs::remove_file(out).unwrap();
            continue;
        }
        // The in-process path (calibrated on the same inputs, the same
        // graph) computes the same values.
        let direct = scratch(&format!("{m}-direct.npz"));
        let fx = |ext: &str| fixture(&format!("{f}.{ext}")).display().to_string();
        let o = m4c(&[
            "run",
            &fx("onnx"),
            "--backend",
            "npu",
            "--inputs",
            &fx("inputs.npz"),
            "-o",
            direct.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let (a, b) = (
            m4c_runtime::read_npz(&out).unwrap(),
            m4c_runtime::read_npz(&direct).unwrap(),
        );
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (name, v) in &a {
            let c = m4c_ops::compare(v, &b[name], 0.0, 0.0);
            assert_eq!(c.mismatches, 0, "{m} {name}: {}", c.summary());
        }
        std::fs::remove_file(out).unwrap();
        std::fs::remove_file(direct).unwrap();
    }
}

/// Unsigned, or signed by a key this host does not trust, the NPU
/// programs still run (they are data for the simulator) and the
/// CPU-fallback parts run on the reference interpreter, with one note
/// naming why; `--engine compiled` refuses the module in one error line;
/// the outputs still match onnxruntime.
#[test]
fn an_untrusted_bundle_runs_its_fallback_parts_on_the_interpreter() {
    let unsigned = scratch_file("unsigned.fw", &unsigned_bytes());
    let other = sign::SecretKey::generate().unwrap();
    let mut bytes = unsigned_bytes();
    sign::sign(&mut bytes, &other).unwrap();
    let untrusted = scratch_file("other-key.fw", &bytes);
    let fp = other.public().fingerprint();
    let cases = [
        (&unsigned, "the bundle is not signed".to_string()),
        (
            &untrusted,
            format!("the bundle is signed by key {fp}, which is not trusted"),
        ),
    ];
    for (fw, why) in &cases {
        for (m, f, fallback, _) in MODULES {
            let out = scratch(&format!("{m}-untrusted.npz"));
            let o = run_bundle(fw, m, f, &out, &[]);
            let t = text(&o);
            assert_eq!(o.status.code(), Some(0), "{m}: {t}");
            assert!(!t.contains("FAIL"), "{t}");
            let note = notes(&o);
            assert_eq!(note.len(), 2, "{t}");
            assert!(
                note[0].ends_with(&format!(
                    " 0 CPU-fallback part(s) compiled, {fallback} on the interpreter"
                )),
                "{t}"
            );
            let named: Vec<&String> = note.iter().filter(|l| l.contains(why.as_str())).collect();
            assert_eq!(named.len(), 1, "{t}");
            assert!(
                named[0].contains("run on the reference interpreter: its native code is refused: ")
                    || named[0].contains(
                        "runs on the reference interpreter: its native code is refused: "
                    ),
                "{t}"
            );
            assert_matches_onnxruntime(&out, f);
            std::fs::remove_file(&out).unwrap();
            // `compiled` means every part's compiled code, native included.
            let o = run_bundle(fw, m, f, &out, &["--engine", "compiled"]);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(2), "{}", text(&o));
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(err.starts_with("error: "), "{err}");
            assert!(err.contains(why.as_str()), "{err}");
            assert!(
                err.contains(&format!(
                    "{fallback} CPU-fallback part(s) would run on the reference interpreter"
                )),
                "{err}"
            );
            assert!(!out.exists());
        }
        let info = m4c(&["firmware", "info", fw.to_str().unwrap()]);
        assert_eq!(info.status.code(), Some(0), "{}", text(&info));
    }
    let info = text(&m4c(&["firmware", "info", unsigned.to_str().unwrap()]));
    assert!(
        info.contains("signature: none (native code in it is not loaded: NPU programs run, CPU-fallback parts on the interpreter)"),
        "{info}"
    );
    std::fs::remove_file(unsigned).unwrap();
    std::fs::remove_file(untrusted).unwrap();
}

/// Asserts exit 2 with exactly one stderr line, an `error:` containing
/// every one of `want`.
fn assert_one_error(o: &Output, want: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{}", text(o));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    for w in want {
        assert!(err.contains(w), "{w}: {err}");
    }
}

/// Without calibration data (no `.inputs.npz` beside the model, or a
/// `--calibrate` file that is not there) or with data of the wrong type,
/// the build is one error line naming the module, and writes nothing.
#[test]
fn missing_or_wrong_calibration_data_is_one_error() {
    let dir = scratch("lone");
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("imu_encoder.onnx");
    std::fs::copy(fixture("imu_encoder.onnx"), &model).unwrap();
    let out = dir.join("M4.fw");
    let module = format!("imu={}", model.display());
    let build = |extra: &[&str]| {
        let mut args = vec![
            "firmware",
            "build",
            "--backend",
            "npu",
            "--module",
            &module,
            "-o",
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        m4c(&args)
    };
    let beside = dir.join("imu_encoder.inputs.npz").display().to_string();
    assert_one_error(
        &build(&[]),
        &["module `imu`", &beside, "--calibrate imu=DATA.npz"],
    );
    let missing = dir.join("missing.npz");
    let calibrate = format!("imu={}", missing.display());
    assert_one_error(
        &build(&["--calibrate", &calibrate]),
        &["module `imu`", &missing.display().to_string()],
    );
    let ints = dir.join("ints.npz");
    let wrong = m4c_ops::Value::I64(ndarray::ArrayD::zeros(vec![1, 6, 64]));
    m4c_runtime::write_npz(&ints, &[], &[("imu".into(), wrong)]).unwrap();
    let calibrate = format!("imu={}", ints.display());
    assert_one_error(
        &build(&["--calibrate", &calibrate]),
        &[
            "module `imu`",
            &ints.display().to_string(),
            "input `imu` is i64 [1, 6, 64] but the model expects f32",
        ],
    );
    assert!(!out.exists());
    // An explicit file is used without a note; the section is named by
    // the machine config, which the bundle carries.
    let calibrate = format!("imu={}", fixture("imu_encoder.inputs.npz").display());
    let o = build(&["--calibrate", &calibrate, "--target", "phone-flagship"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(notes(&o).is_empty(), "{t}");
    assert!(
        t.contains("  code imu.phone-flagship: NPU config phone-flagship, "),
        "{t}"
    );
    let outputs = dir.join("outputs.npz");
    let o = run_bundle(&out, "imu", "imu_encoder", &outputs, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        notes(&o)[0].starts_with("note: npu:phone-flagship: "),
        "{}",
        text(&o)
    );
    assert_matches_onnxruntime(&outputs, "imu_encoder");
    std::fs::remove_dir_all(dir).unwrap();
}

/// `--strict` refuses a module with fallback at build time, naming the
/// constraint; `--calibrate` and `--strict` belong to `--backend npu`.
#[test]
fn strict_and_calibrate_are_checked() {
    let out = scratch("strict.fw");
    let imu = format!("imu={}", fixture("imu_encoder.onnx").display());
    let o = m4c(&[
        "firmware",
        "build",
        "--backend",
        "npu",
        "--module",
        &imu,
        "--strict",
        "-o",
        out.to_str().unwrap(),
    ]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(t.contains("error: module `imu`: --strict: "), "{t}");
    assert!(
        t.contains("would fall back to the CPU on npu:edge-small"),
        "{t}"
    );
    assert!(!out.exists());
    let calibrate = format!("imu={}", fixture("imu_encoder.inputs.npz").display());
    for (extra, want) in [
        (vec!["--calibrate", &calibrate], "apply to --backend npu"),
        (vec!["--strict"], "apply to --backend npu"),
    ] {
        let mut args = vec![
            "firmware",
            "build",
            "--module",
            &imu,
            "-o",
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        assert_one_error(&m4c(&args), &[want]);
    }
    let other = format!("bob={}", fixture("imu_encoder.inputs.npz").display());
    let o = m4c(&[
        "firmware",
        "build",
        "--backend",
        "npu",
        "--module",
        &imu,
        "--calibrate",
        &other,
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_one_error(&o, &["--calibrate bob: there is no module `bob`"]);
    assert!(!out.exists());
}

/// Re-seals an unsigned firmware image with the bytes of `module`'s NPU
/// section of `kind` replaced by `edit`'s.
fn reseal(
    image: &[u8],
    module: &str,
    kind: SectionKind,
    edit: &dyn Fn(&[u8]) -> Vec<u8>,
) -> Vec<u8> {
    let section = format!("{module}.edge-small");
    sandbox::reseal(image, &|s, bytes| {
        (s.kind == kind && s.name == section).then(|| edit(bytes))
    })
}

/// `edit` applied to the plan's JSON.
fn plan_edit(edit: fn(&mut serde_json::Value)) -> impl Fn(&[u8]) -> Vec<u8> {
    move |bytes| {
        let mut plan: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        edit(&mut plan);
        serde_json::to_vec(&plan).unwrap()
    }
}

/// The first part of kind `kind` (`npu`, `fallback`) of a plan.
fn part<'a>(plan: &'a mut serde_json::Value, kind: &str) -> &'a mut serde_json::Value {
    plan["parts"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|p| p["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} part"))
}

/// A re-sealed bundle whose NPU plan, programs or fallback store were
/// edited is one error line naming the bundle, the module and what is
/// wrong, under every engine that reads the code, and never a panic.
#[test]
fn a_tampered_npu_section_is_one_error() {
    let image = unsigned_bytes();
    type Edit = Box<dyn Fn(&[u8]) -> Vec<u8>>;
    let cases: Vec<(&str, SectionKind, Edit, &str)> = vec![
        (
            "not-json",
            SectionKind::CodePlan,
            Box::new(|b: &[u8]| b[..b.len() / 2].to_vec()),
            "code-plan: ",
        ),
        (
            "first-program",
            SectionKind::CodePlan,
            Box::new(plan_edit(|p| {
                part(p, "npu")["first_program"] = 1_000_000.into()
            })),
            "first program 1000000",
        ),
        (
            "huge-tensor",
            SectionKind::CodePlan,
            Box::new(plan_edit(|p| {
                part(p, "npu")["plan"]["tensors"][0]["bytes"] = (1u64 << 60).into()
            })),
            "vs 1152921504606846976 bytes",
        ),
        (
            "other-config",
            SectionKind::CodePlan,
            Box::new(plan_edit(|p| p["config"]["name"] = "phone-flagship".into())),
            "the plan is for NPU config `phone-flagship`, the code entry for `edge-small`",
        ),
        (
            "input-layout",
            SectionKind::CodePlan,
            Box::new(plan_edit(|p| {
                part(p, "npu")["inputs"][0]["layout"] =
                    serde_json::json!({"kind": "patches", "kh": 0, "kw": 1})
            })),
            "layout of a value of shape [1, 6, 64]",
        ),
        (
            "fallback-ir",
            SectionKind::CodePlan,
            Box::new(plan_edit(|p| part(p, "fallback")["ir"] = "graph {".into())),
            "IR text line 1",
        ),
        (
            "programs-truncated",
            SectionKind::Code,
            Box::new(|b: &[u8]| b[..b.len() - 3].to_vec()),
            "truncated",
        ),
        (
            "store-truncated",
            SectionKind::CodeWeights,
            Box::new(|b: &[u8]| b[..b.len() / 2].to_vec()),
            "outside the",
        ),
    ];
    for (name, kind, edit, want) in &cases {
        let fw = scratch_file(
            &format!("{name}.fw"),
            &reseal(&image, "imu", *kind, edit.as_ref()),
        );
        let path = fw.display().to_string();
        for engine in ["auto", "reference", "compiled"] {
            let out = scratch(&format!("{name}-{engine}.npz"));
            let o = run_bundle(&fw, "imu", "imu_encoder", &out, &["--engine", engine]);
            assert_one_error(&o, &[&path, "module `imu`", want]);
            assert!(!out.exists());
        }
        let o = m4c(&["firmware", "info", &path]);
        assert_one_error(&o, &[&path, want]);
        std::fs::remove_file(fw).unwrap();
    }
}

/// Flipped bytes in the programs and the fallback store of a re-sealed
/// bundle never panic: each is refused in one error line, or (a program
/// still well formed) runs to an output that is judged like any other.
#[test]
fn flipped_npu_bytes_never_panic() {
    let image = unsigned_bytes();
    for kind in [SectionKind::Code, SectionKind::CodeWeights] {
        for at in [0usize, 7, 64, 333, 1000, 4097] {
            let edit = move |b: &[u8]| {
                let mut b = b.to_vec();
                let i = at % b.len();
                b[i] ^= 0x5a;
                b
            };
            let fw = scratch_file(
                &format!("flip-{kind}-{at}.fw"),
                &reseal(&image, "imu", kind, &edit),
            );
            let out = scratch(&format!("flip-{kind}-{at}.npz"));
            let o = run_bundle(&fw, "imu", "imu_encoder", &out, &[]);
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(!err.contains("panicked"), "{kind} byte {at}: {err}");
            // A program that traps is an error of the run (after the
            // notes on what loaded).
            let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
            match o.status.code() {
                Some(0 | 1) => assert!(errors.is_empty(), "{err}"),
                Some(2) => {
                    assert_eq!(errors.len(), 1, "{err}");
                    assert!(errors[0].contains(&fw.display().to_string()), "{err}");
                    assert_eq!(err.lines().last(), Some(errors[0]), "{err}");
                }
                other => panic!("{kind} byte {at}: exit {other:?}: {err}"),
            }
            let _ = std::fs::remove_file(out);
            std::fs::remove_file(fw).unwrap();
        }
    }
}

/// A bundle built for a machine config file carries the config: it runs
/// after the file is gone, its section named by the config's name.
#[test]
fn a_bundle_for_a_config_file_runs_without_the_file() {
    let dir = scratch("config-file");
    std::fs::create_dir_all(&dir).unwrap();
    let toml = dir.join("my_npu.toml");
    let o = m4c(&["npu", "config", "--dump", "-o", toml.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let config = std::fs::read_to_string(&toml).unwrap();
    let config: Vec<String> = config
        .lines()
        .map(|l| {
            if l.starts_with("name = ") {
                "name = \"my-npu\"".to_string()
            } else {
                l.to_string()
            }
        })
        .collect();
    std::fs::write(&toml, config.join("\n")).unwrap();
    let fw = dir.join("M4.fw");
    let module = format!("imu={}", fixture("imu_encoder.onnx").display());
    let backend = format!("npu:{}", toml.display());
    let o = m4c(&[
        "firmware",
        "build",
        "--backend",
        &backend,
        "--module",
        &module,
        "-o",
        fw.to_str().unwrap(),
    ]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(t.contains("  code imu.my-npu: NPU config my-npu, "), "{t}");
    std::fs::remove_file(&toml).unwrap();
    let outputs = dir.join("outputs.npz");
    let o = run_bundle(&fw, "imu", "imu_encoder", &outputs, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        notes(&o)[0].starts_with("note: npu:my-npu: "),
        "{}",
        text(&o)
    );
    assert_matches_onnxruntime(&outputs, "imu_encoder");
    std::fs::remove_dir_all(dir).unwrap();
}
