//! Firmware with compiled CPU code: `m4c firmware build --backend cpu` from
//! the CLIP vision encoder and the LLaMA prefill reproduces their
//! onnxruntime outputs through the compiled code (the run reports which
//! engine ran), rebuilds are byte-identical, a damaged code section is
//! named, an attached adapter falls back to the interpreter, and the
//! loaded code reads its packed weights in the bundle's map (no copy).
//! The firmware is signed with a test key that the runs trust; unsigned,
//! untrusted and tampered bundles have their code refused, and a
//! re-sealed bundle with an edited code plan is one error naming it.
//! Lean bundles (each weight stored once) are in `firmware_code/lean.rs`.
//!
//! Compiled code needs a host with AVX2+FMA (x86-64); elsewhere the tests
//! say so and check nothing.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use m4c_ir::Tensor;
use m4c_ops::Value;
use m4c_runtime::bundle::format::SectionKind;
use m4c_runtime::bundle::{container, sign, Bundle};
use m4c_runtime::exec::compiled::host_runs;
use m4c_runtime::exec::{CompiledModule, ModuleExecutor, Signature};

mod common;
#[path = "firmware_code/lean.rs"]
mod lean;
use common::{fixture, text};
#[path = "common/firmware.rs"]
mod sandbox;

/// (module name, fixture).
const MODULES: [(&str, &str); 2] = [("img_enc", "clip_vision"), ("backbone", "llama_prefill")];

fn scratch(name: &str) -> PathBuf {
    sandbox::scratch("cli_firmware_code", name)
}

/// Runs `m4c` trusting nothing.
fn m4c(args: &[&str]) -> Output {
    m4c_trusting(args, sandbox::empty_trust_dir("cli_firmware_code"))
}

use sandbox::m4c_trusting;

/// The test signing key: the secret key file and the public one the runs
/// trust.
fn key() -> &'static (PathBuf, PathBuf) {
    sandbox::key("cli_firmware_code")
}

/// `--trust-key` with the test key.
fn trust() -> [&'static str; 2] {
    ["--trust-key", key().1.to_str().unwrap()]
}

/// Whether compiled code can run here (AVX2 is the least the CPU backend
/// links for a host).
fn can_run_code() -> bool {
    let ok = host_runs("x86_64-avx2").is_ok();
    if !ok {
        eprintln!("skipped: this host cannot run the CPU backend's code");
    }
    ok
}

/// Builds a `--backend cpu` firmware of [`MODULES`] at `out`.
fn build(out: &Path) -> Output {
    let mut args = vec!["firmware".to_string(), "build".into()];
    for (m, f) in MODULES {
        args.push("--module".into());
        args.push(format!("{m}={}", fixture(&format!("{f}.onnx")).display()));
    }
    args.extend(["--backend", "cpu", "--sign-key"].map(String::from));
    args.push(key().0.display().to_string());
    args.push("-o".into());
    args.push(out.display().to_string());
    m4c(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// The firmware, built once per test binary.
fn firmware() -> &'static Path {
    static FW: OnceLock<PathBuf> = OnceLock::new();
    FW.get_or_init(|| {
        let out = scratch("M4.fw");
        let o = build(&out);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        out
    })
}

/// `m4c run FW --module NAME --engine ENGINE` on the fixture's inputs,
/// compared with its onnxruntime outputs (default rtol 1e-4, atol 1e-5),
/// trusting the test key.
fn run(fw: &Path, module: &str, fixture_name: &str, engine: &str, extra: &[&str]) -> Output {
    run_untrusted(
        fw,
        module,
        fixture_name,
        engine,
        &[extra, &trust()].concat(),
    )
}

/// [`run`] without trusting any key.
fn run_untrusted(
    fw: &Path,
    module: &str,
    fixture_name: &str,
    engine: &str,
    extra: &[&str],
) -> Output {
    let inputs = fixture(&format!("{fixture_name}.inputs.npz"));
    let expect = fixture(&format!("{fixture_name}.expected.npz"));
    let mut args = vec![
        "run",
        fw.to_str().unwrap(),
        "--module",
        module,
        "--engine",
        engine,
        "--inputs",
        inputs.to_str().unwrap(),
        "--expect",
        expect.to_str().unwrap(),
    ];
    args.extend(extra);
    m4c(&args)
}

#[test]
fn compiled_modules_reproduce_onnxruntime() {
    if !can_run_code() {
        return;
    }
    let fw = Bundle::open(firmware()).unwrap();
    for (module, fixture_name) in MODULES {
        let code = fw.code(module);
        assert_eq!(code.len(), 1, "{module}");
        assert!(
            code[0]
                .section(SectionKind::Code)
                .unwrap()
                .starts_with(b"\x7fELF"),
            "{module}"
        );
        for engine in ["compiled", "auto"] {
            let o = run(firmware(), module, fixture_name, engine, &[]);
            let out = text(&o);
            assert_eq!(o.status.code(), Some(0), "{module} {engine}: {out}");
            assert!(
                out.contains(&format!("module `{module}`: compiled code")),
                "{module} {engine}: {out}"
            );
            assert!(!out.contains("note:"), "{module} {engine}: {out}");
        }
        // The same bundle's IR, on the interpreter.
        let o = run(firmware(), module, fixture_name, "reference", &[]);
        let out = text(&o);
        assert_eq!(o.status.code(), Some(0), "{module}: {out}");
        assert!(out.contains("reference interpreter"), "{module}: {out}");
    }
    // The compiled code really computes: another module's references fail.
    let o = run(firmware(), "backbone", "llama_lora", "compiled", &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}

#[test]
fn compiled_code_reads_its_weights_in_the_bundle_map() {
    if !can_run_code() {
        return;
    }
    for (module, _) in MODULES {
        let fw = Bundle::open(firmware()).unwrap();
        let signature = Signature::of(&fw.module(module).unwrap());
        let code = &fw.code(module)[0];
        let loaded = CompiledModule::load(module, code, signature.clone(), 1).unwrap();
        // The section is a slice of the bundle's map; the executor's
        // weights are that very slice, not a copy of it.
        let section = code
            .section(SectionKind::CodeWeights)
            .unwrap()
            .as_ptr_range();
        assert!(
            !code.section(SectionKind::CodeWeights).unwrap().is_empty(),
            "{module}"
        );
        assert_eq!(loaded.code_weights_at(), section, "{module}");
        // Zeros in, and the same outputs once the bundle itself is dropped:
        // the loaded module keeps the map alive.
        let inputs: Vec<Value> = signature
            .inputs
            .iter()
            .map(|(_, ty)| {
                let shape = ty.static_shape().unwrap();
                let bytes = shape.iter().product::<usize>() * ty.dtype.size_bits() / 8;
                Value::from_tensor(&Tensor::from_bytes(ty.dtype, &shape, vec![0; bytes])).unwrap()
            })
            .collect();
        let before = loaded.run(&inputs).unwrap();
        drop(fw);
        let after = loaded.run(&inputs).unwrap();
        let bytes = |vs: &[Value]| -> Vec<Vec<u8>> {
            vs.iter()
                .map(|v| v.to_tensor().bytes().unwrap().to_vec())
                .collect()
        };
        assert_eq!(bytes(&before), bytes(&after), "{module}");
    }
}

#[test]
fn rebuilding_gives_identical_bytes() {
    if !can_run_code() {
        return;
    }
    let again = scratch("again.fw");
    let o = build(&again);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        std::fs::read(&again).unwrap() == std::fs::read(firmware()).unwrap(),
        "two builds of the same modules differ"
    );
    std::fs::remove_file(again).unwrap();
}

#[test]
fn a_damaged_code_section_is_named_and_nothing_runs() {
    if !can_run_code() {
        return;
    }
    let bytes = std::fs::read(firmware()).unwrap();
    let fw = Bundle::from_bytes(&bytes).unwrap();
    for kind in [
        SectionKind::Code,
        SectionKind::CodePlan,
        SectionKind::CodeWeights,
    ] {
        let s = fw
            .manifest()
            .sections
            .iter()
            .find(|s| s.kind == kind && s.name.starts_with("img_enc."))
            .unwrap();
        let mut damaged = bytes.clone();
        damaged[(s.offset + s.len / 2) as usize] ^= 0x10;
        let path = scratch(&format!("damaged-{kind}.fw"));
        std::fs::write(&path, &damaged).unwrap();
        let want = format!("checksum mismatch in section {kind} `{}`", s.name);
        for engine in ["auto", "reference"] {
            let o = run(&path, "img_enc", "clip_vision", engine, &[]);
            let out = text(&o);
            assert_eq!(o.status.code(), Some(2), "{kind} {engine}: {out}");
            assert!(out.contains(&want), "{kind} {engine}: {out}");
            assert_eq!(
                String::from_utf8_lossy(&o.stderr).lines().count(),
                1,
                "{out}"
            );
        }
        std::fs::remove_file(path).unwrap();
    }
}

#[test]
fn an_adapted_module_falls_back_to_the_interpreter() {
    if !can_run_code() {
        return;
    }
    let app = scratch("keep.m4a");
    let peft = fixture("llama_lora_adapter");
    let o = m4c(&[
        "adapt",
        firmware().to_str().unwrap(),
        "--module",
        "backbone",
        "--adapter",
        peft.to_str().unwrap(),
        "-o",
        app.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let adapter = ["--adapter", app.to_str().unwrap()];
    let o = run(firmware(), "backbone", "llama_lora", "auto", &adapter);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains(&format!(
            "note: {}: module `backbone` runs on the reference interpreter: an adapter is attached",
            firmware().display()
        )),
        "{out}"
    );
    let o = run(firmware(), "backbone", "llama_lora", "compiled", &adapter);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(out.contains("an adapter is attached"), "{out}");
    std::fs::remove_file(app).unwrap();
}

#[test]
fn engine_and_cpu_options_are_checked() {
    let clip = fixture("clip_vision.onnx");
    let inputs = fixture("clip_vision.inputs.npz");
    let o = m4c(&[
        "run",
        clip.to_str().unwrap(),
        "--engine",
        "compiled",
        "--inputs",
        inputs.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("--engine apply to bundles"),
        "{}",
        text(&o)
    );
    let out = scratch("never.fw");
    let o = m4c(&[
        "firmware",
        "build",
        "--module",
        &format!("img_enc={}", clip.display()),
        "--cpu",
        "znver4",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("apply to compiled backends"),
        "{}",
        text(&o)
    );
    assert!(!out.exists());
}

/// The firmware's bytes without its signature trailer: the sealed image
/// exactly as an unsigned build writes it.
fn unsigned_bytes() -> Vec<u8> {
    let bytes = std::fs::read(firmware()).unwrap();
    let image = &bytes[..bytes.len() - sign::TRAILER_LEN];
    assert!(bytes[image.len()..].starts_with(&sign::TRAILER_MAGIC));
    image.to_vec()
}

/// Writes `bytes` to a scratch file named `name`.
fn scratch_file(name: &str, bytes: &[u8]) -> PathBuf {
    let path = scratch(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Asserts exit 2 with exactly one stderr line, an `error:` naming `path`
/// and containing `want`.
fn assert_one_error(o: &Output, path: &Path, want: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{}", text(o));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains(want), "{err}");
}

/// Under `auto` the module's IR runs on the interpreter with a note
/// saying why (`want`); under `compiled` it is one error line.
fn assert_code_refused(fw: &Path, want: &str) {
    let o = run(fw, "img_enc", "clip_vision", "auto", &[]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains("module `img_enc`: reference interpreter"),
        "{out}"
    );
    let note = format!(
        "note: {}: module `img_enc` runs on the reference interpreter: its native code is refused: {want}",
        fw.display()
    );
    assert!(out.contains(&note), "{out}");
    let o = run(fw, "img_enc", "clip_vision", "compiled", &[]);
    assert_one_error(&o, fw, want);
}

#[test]
fn unsigned_code_is_refused() {
    if !can_run_code() {
        return;
    }
    let fw = scratch_file("unsigned.fw", &unsigned_bytes());
    assert_code_refused(&fw, "the bundle is not signed");
    let o = m4c(&["firmware", "info", fw.to_str().unwrap()]);
    assert!(text(&o).contains("signature: none"), "{}", text(&o));
    std::fs::remove_file(fw).unwrap();
}

#[test]
fn code_signed_by_an_untrusted_key_is_refused_until_trusted() {
    if !can_run_code() {
        return;
    }
    let other = sign::SecretKey::generate().unwrap();
    let mut bytes = unsigned_bytes();
    sign::sign(&mut bytes, &other).unwrap();
    let fw = scratch_file("other-key.fw", &bytes);
    let fp = other.public().fingerprint();
    assert_code_refused(
        &fw,
        &format!("the bundle is signed by key {fp}, which is not trusted"),
    );
    let o = m4c(&["firmware", "info", fw.to_str().unwrap()]);
    let out = text(&o);
    assert!(
        out.contains(&format!("signature: valid, key {fp} (NOT trusted here")),
        "{out}"
    );
    // Trusted through the trust directory, it runs.
    let dir = scratch("trust-dir");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("other.pub"), other.public().to_text()).unwrap();
    let inputs = fixture("clip_vision.inputs.npz");
    let expect = fixture("clip_vision.expected.npz");
    let args = [
        "run",
        fw.to_str().unwrap(),
        "--module",
        "img_enc",
        "--engine",
        "compiled",
        "--inputs",
        inputs.to_str().unwrap(),
        "--expect",
        expect.to_str().unwrap(),
    ];
    let o = m4c_trusting(&args, &dir);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("compiled code (cpu)"), "{}", text(&o));
    let o = m4c_trusting(&["firmware", "info", fw.to_str().unwrap()], &dir);
    assert!(
        text(&o).contains(&format!("key {fp} (trusted)")),
        "{}",
        text(&o)
    );
    std::fs::remove_dir_all(dir).unwrap();
    std::fs::remove_file(fw).unwrap();
}

#[test]
fn a_tampered_signed_bundle_does_not_open() {
    if !can_run_code() {
        return;
    }
    let signed = std::fs::read(firmware()).unwrap();
    let trailer = signed.len() - sign::TRAILER_LEN;
    // A byte of the signature, of the key, and a re-sealed image (every
    // checksum recomputed) under the original trailer.
    let mut bad_sig = signed.clone();
    bad_sig[signed.len() - 1] ^= 1;
    let mut bad_key = signed.clone();
    bad_key[trailer + 8] ^= 1;
    let mut resealed = reseal_with_plan(&unsigned_bytes(), "img_enc", |plan| {
        plan["object"] = "evil.o".into();
    });
    resealed.extend_from_slice(&signed[trailer..]);
    for (name, bytes) in [
        ("bad-sig", bad_sig),
        ("bad-key", bad_key),
        ("resealed", resealed),
    ] {
        let fw = scratch_file(&format!("{name}.fw"), &bytes);
        for engine in ["auto", "reference", "compiled"] {
            let o = run(&fw, "img_enc", "clip_vision", engine, &[]);
            assert_one_error(&o, &fw, "signature");
        }
        std::fs::remove_file(fw).unwrap();
    }
}

/// Re-seals an unsigned firmware image with `module`'s code plan edited
/// by `edit`.
fn reseal_with_plan(image: &[u8], module: &str, edit: impl Fn(&mut serde_json::Value)) -> Vec<u8> {
    let prefix = format!("{module}.");
    sandbox::reseal(image, &|s, bytes| {
        (s.kind == SectionKind::CodePlan && s.name.starts_with(&prefix)).then(|| {
            let mut plan: serde_json::Value = serde_json::from_slice(bytes).unwrap();
            edit(&mut plan);
            serde_json::to_vec(&plan).unwrap()
        })
    })
}

#[test]
fn an_edited_code_plan_is_one_error_naming_the_bundle() {
    if !can_run_code() {
        return;
    }
    type Edit = fn(&mut serde_json::Value);
    let cases: [(&str, Edit, &str); 9] = [
        (
            "arena",
            |p| p["graph"]["arena_bytes"] = 16.into(),
            "pass its end (16 bytes)",
        ),
        (
            "huge-arena",
            |p| p["graph"]["arena_bytes"] = (1u64 << 50).into(),
            "byte arena",
        ),
        (
            "kernel-offset",
            |p| {
                for s in p["graph"]["steps"].as_array_mut().unwrap() {
                    if let Some(k) = s.get_mut("Kernel") {
                        k["buffers"][0]["offset"] = (1u64 << 40).into();
                        return;
                    }
                }
            },
            "buffer 0: 0 bytes at offset 1099511627776",
        ),
        (
            "output-offset",
            |p| p["graph"]["outputs"][0]["buf"]["offset"] = (1u64 << 40).into(),
            "output `",
        ),
        (
            "unknown-gemm",
            |p| {
                for s in p["graph"]["steps"].as_array_mut().unwrap() {
                    if let Some(g) = s.get_mut("Gemm") {
                        g["symbol"] = "system".into();
                        return;
                    }
                }
            },
            "GEMM `system` is not in the plan's GEMM table",
        ),
        (
            "bad-symbol",
            |p| {
                for s in p["graph"]["steps"].as_array_mut().unwrap() {
                    if let Some(k) = s.get_mut("Kernel") {
                        k["symbol"] = "a;b".into();
                        return;
                    }
                }
            },
            "is not a C identifier",
        ),
        (
            "input-count",
            |p| {
                let inputs = p["graph"]["inputs"].as_array_mut().unwrap();
                let first = inputs[0].clone();
                inputs.push(first);
            },
            "inputs, the IR",
        ),
        (
            "packed-weights",
            |p| p["gemms"][0]["weights_offset"] = (1u64 << 60).into(),
            "passes the end of code-weights",
        ),
        (
            "scratch",
            |p| {
                for s in p["graph"]["steps"].as_array_mut().unwrap() {
                    if let Some(k) = s.get_mut("Kernel") {
                        k["scratch_bytes"] = (1u64 << 40).into();
                        return;
                    }
                }
            },
            "bytes of scratch",
        ),
    ];
    let image = unsigned_bytes();
    for (name, edit, want) in cases {
        let fw = scratch_file(
            &format!("plan-{name}.fw"),
            &reseal_with_plan(&image, "img_enc", edit),
        );
        let o = m4c(&["firmware", "info", fw.to_str().unwrap()]);
        assert_one_error(&o, &fw, want);
        let o = run(&fw, "img_enc", "clip_vision", "auto", &[]);
        assert_one_error(&o, &fw, want);
        std::fs::remove_file(fw).unwrap();
    }
}

/// The plan validator accepts what the code generator really makes: a
/// `--backend cpu` firmware of every fixture model builds (the build reads
/// the bundle back with every check, the plan's included) and opens.
#[test]
fn every_fixture_compiles_to_a_plan_the_validator_accepts() {
    if !can_run_code() {
        return;
    }
    let dir = fixture("");
    let mut models: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .map(|p| p.display().to_string())
        .collect();
    models.sort();
    assert!(models.len() >= 20, "{models:?}");
    let out = scratch("every.fw");
    let mut args = vec!["firmware".to_string(), "build".into()];
    for (i, m) in models.iter().enumerate() {
        args.extend(["--module".into(), format!("m{i}={m}")]);
    }
    args.extend(["--backend", "cpu", "--default-dim", "2", "-o"].map(String::from));
    args.push(out.display().to_string());
    let o = m4c(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let fw = Bundle::open(&out).unwrap();
    assert_eq!(fw.modules().count(), models.len());
    assert!(fw.modules().all(|m| fw.code(m).len() == 1));
    std::fs::remove_file(out).unwrap();
}
