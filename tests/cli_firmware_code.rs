//! Firmware with compiled CPU code: `m4c firmware build --backend cpu` from
//! the CLIP vision encoder and the LLaMA prefill reproduces their
//! onnxruntime outputs through the compiled code (the run reports which
//! engine ran), rebuilds are byte-identical, a damaged code section is
//! named, an attached adapter falls back to the interpreter, and the
//! loaded code reads its packed weights in the bundle's map (no copy).
//!
//! Compiled code needs a host with AVX2+FMA (x86-64); elsewhere the tests
//! say so and check nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use m4c_ir::Tensor;
use m4c_ops::Value;
use m4c_runtime::bundle::format::SectionKind;
use m4c_runtime::bundle::Bundle;
use m4c_runtime::exec::compiled::host_runs;
use m4c_runtime::exec::{CompiledModule, ModuleExecutor, Signature};

/// (module name, fixture).
const MODULES: [(&str, &str); 2] = [("img_enc", "clip_vision"), ("backbone", "llama_prefill")];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli_firmware_code");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{}-{name}", std::process::id()))
}

fn m4c(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_m4c"))
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
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
    args.extend(["--backend", "cpu", "-o"].map(String::from));
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
/// compared with its onnxruntime outputs (default rtol 1e-4, atol 1e-5).
fn run(fw: &Path, module: &str, fixture_name: &str, engine: &str, extra: &[&str]) -> Output {
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
        out.contains(
            "note: module `backbone` runs on the reference interpreter: an adapter is attached"
        ),
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
