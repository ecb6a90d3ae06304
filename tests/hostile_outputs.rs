//! Output files never destroy anything: every command that writes a file
//! refuses (exit 2, one `error:` line naming the file) an output that is
//! one of its inputs, a symbolic link, a directory, a device node or a
//! FIFO, and leaves nothing behind when it cannot write or is interrupted.
//! Each case runs in a fresh directory whose every file (name and bytes)
//! is the same afterwards: inputs unchanged, no temporary left.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use m4c_compiler::onnx::pb;
use prost::Message;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn m4c(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_m4c"))
        .args(args)
        .output()
        .unwrap()
}

/// A fresh directory holding copies of fixtures.
struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new(fixtures: &[&str]) -> Case {
        let dir = tempfile::tempdir().unwrap();
        for f in fixtures {
            copy_tree(&fixture(f), &dir.path().join(f));
        }
        Case { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn s(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// Every file under the directory: relative path → bytes (a link's
    /// target, a FIFO's kind).
    fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        walk(self.dir.path(), self.dir.path(), &mut out);
        out
    }
}

fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            copy_tree(&e.path(), &to.join(e.file_name()));
        }
    } else {
        std::fs::copy(from, to).unwrap();
    }
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let rel = p.strip_prefix(root).unwrap().to_path_buf();
        let meta = std::fs::symlink_metadata(&p).unwrap();
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&p).unwrap();
            out.insert(rel, format!("-> {}", target.display()).into_bytes());
        } else if meta.is_dir() {
            out.insert(rel, b"<dir>".to_vec());
            walk(root, &p, out);
        } else if meta.is_file() {
            out.insert(rel, std::fs::read(&p).unwrap());
        } else {
            out.insert(rel, b"<special>".to_vec());
        }
    }
}

/// Runs `args` in `case` and asserts the refusal: exit 2, exactly one
/// stderr line, an `error:` naming `file` and saying `why`, and the
/// directory exactly as before.
fn assert_refused(case: &Case, args: &[&str], file: &str, why: &str) {
    let before = case.snapshot();
    let o = m4c(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(file), "`{file}` not named: {err}");
    assert!(err.contains(why), "`{why}` not said: {err}");
    assert_eq!(case.snapshot(), before, "{args:?} changed the directory");
}

const MODEL: &str = "batchnorm_net.onnx";
const INPUTS: &str = "batchnorm_net.inputs.npz";
const EXPECTED: &str = "batchnorm_net.expected.npz";

fn model_case() -> Case {
    Case::new(&[MODEL, INPUTS, EXPECTED])
}

/// `m4c run MODEL --inputs INPUTS -o OUT` in `case`.
fn run_to(case: &Case, out: &str) -> Vec<String> {
    [
        "run",
        &case.s(MODEL),
        "--inputs",
        &case.s(INPUTS),
        "-o",
        out,
    ]
    .map(String::from)
    .to_vec()
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn run_output_is_its_inputs_npz() {
    let c = model_case();
    let args = run_to(&c, &c.s(INPUTS));
    assert_refused(&c, &refs(&args), INPUTS, "is the input");
}

#[test]
fn run_output_is_its_model() {
    let c = model_case();
    let args = run_to(&c, &c.s(MODEL));
    assert_refused(&c, &refs(&args), MODEL, "is the input");
}

#[test]
fn run_output_is_its_expected_npz() {
    let c = model_case();
    let mut args = run_to(&c, &c.s(EXPECTED));
    args.extend(["--expect".into(), c.s(EXPECTED)]);
    assert_refused(&c, &refs(&args), EXPECTED, "is the input");
}

#[test]
fn run_output_is_an_input_spelled_differently() {
    let c = model_case();
    let other = format!("{}/./sub/../{INPUTS}", c.dir.path().display());
    std::fs::create_dir(c.path("sub")).unwrap();
    let args = run_to(&c, &other);
    assert_refused(&c, &refs(&args), INPUTS, "is the input");
}

#[test]
fn run_output_is_a_hard_link_to_an_input() {
    let c = model_case();
    std::fs::hard_link(c.path(INPUTS), c.path("alias.npz")).unwrap();
    let args = run_to(&c, &c.s("alias.npz"));
    assert_refused(&c, &refs(&args), "alias.npz", "is the input");
}

#[test]
fn run_output_through_a_symlink() {
    let c = model_case();
    std::fs::write(c.path("victim"), b"precious").unwrap();
    std::os::unix::fs::symlink(c.path("victim"), c.path("out.npz")).unwrap();
    let args = run_to(&c, &c.s("out.npz"));
    assert_refused(&c, &refs(&args), "out.npz", "symbolic link");
}

#[test]
fn run_output_is_a_dangling_symlink() {
    let c = model_case();
    std::os::unix::fs::symlink(c.path("planted"), c.path("out.npz")).unwrap();
    let args = run_to(&c, &c.s("out.npz"));
    assert_refused(&c, &refs(&args), "out.npz", "symbolic link");
}

#[test]
fn run_output_is_a_directory() {
    let c = model_case();
    std::fs::create_dir(c.path("out.npz")).unwrap();
    let args = run_to(&c, &c.s("out.npz"));
    assert_refused(&c, &refs(&args), "out.npz", "not a regular file");
}

#[test]
fn run_output_is_a_device_node() {
    let c = model_case();
    let args = run_to(&c, "/dev/null");
    assert_refused(&c, &refs(&args), "/dev/null", "not a regular file");
}

#[test]
fn run_output_is_a_fifo() {
    let c = model_case();
    let fifo = c.path("out.npz");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let args = run_to(&c, &c.s("out.npz"));
    assert_refused(&c, &refs(&args), "out.npz", "not a regular file");
}

#[test]
fn run_output_in_an_unwritable_directory() {
    // /proc refuses new files to every user, root included.
    let c = model_case();
    let args = run_to(&c, "/proc/m4c-hostile-out.npz");
    assert_refused(
        &c,
        &refs(&args),
        "/proc/m4c-hostile-out.npz",
        "cannot write",
    );
    assert!(!Path::new("/proc/m4c-hostile-out.npz").exists());
}

#[test]
fn run_output_in_a_missing_directory() {
    let c = model_case();
    let args = run_to(&c, &c.s("missing/out.npz"));
    assert_refused(&c, &refs(&args), "missing/out.npz", "cannot write");
}

#[test]
fn opt_output_is_its_model() {
    let c = model_case();
    let args = ["opt", &c.s(MODEL), "-o", &c.s(MODEL)];
    assert_refused(&c, &args, MODEL, "is the input");
}

#[test]
fn opt_output_is_its_ir_input_or_its_weights() {
    let c = Case::new(&["clip_vision.onnx"]);
    let ir = c.s("clip.ir");
    let o = m4c(&["opt", &c.s("clip_vision.onnx"), "-o", &ir]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(c.path("clip.ir.weights").exists());
    assert_refused(&c, &["opt", &ir, "-o", &ir], "clip.ir", "is the input");
    // The input's weights sidecar is an input too.
    let weights = c.s("clip.ir.weights");
    assert_refused(
        &c,
        &["opt", &ir, "-o", &weights],
        "clip.ir.weights",
        "is the input",
    );
}

#[test]
fn firmware_build_output_is_a_module() {
    let c = model_case();
    let module = format!("m={}", c.s(MODEL));
    let args = ["firmware", "build", "--module", &module, "-o", &c.s(MODEL)];
    assert_refused(&c, &args, MODEL, "is the input");
}

#[test]
fn firmware_build_output_is_its_sign_key() {
    let c = model_case();
    let o = m4c(&["keygen", "-o", &c.s("k")]);
    assert_eq!(o.status.code(), Some(0));
    let module = format!("m={}", c.s(MODEL));
    let args = [
        "firmware",
        "build",
        "--module",
        &module,
        "--sign-key",
        &c.s("k"),
        "-o",
        &c.s("k"),
    ];
    assert_refused(&c, &args, "k", "is the input");
}

/// A reference firmware of the LLaMA prefill fixture, and its PEFT adapter.
fn adapt_case() -> Case {
    let c = Case::new(&["llama_prefill.onnx", "llama_lora_adapter"]);
    let module = format!("backbone={}", c.s("llama_prefill.onnx"));
    let o = m4c(&[
        "firmware",
        "build",
        "--module",
        &module,
        "-o",
        &c.s("M4.fw"),
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    c
}

#[test]
fn adapt_output_is_its_firmware_or_its_adapter() {
    let c = adapt_case();
    let fw = c.s("M4.fw");
    let peft = c.s("llama_lora_adapter");
    let adapt = |out: &str| {
        [
            "adapt",
            &fw,
            "--module",
            "backbone",
            "--adapter",
            &peft,
            "-o",
            out,
        ]
        .map(String::from)
    };
    assert_refused(&c, &refs(&adapt(&fw)), "M4.fw", "is the input");
    assert_refused(
        &c,
        &refs(&adapt(&peft)),
        "llama_lora_adapter",
        "not a regular file",
    );
}

#[test]
fn npu_asm_and_disasm_output_is_their_input() {
    let c = Case::new(&[]);
    let (bin, text) = (c.s("g.npub"), c.s("g.s"));
    let gemm = [
        "npu", "gemm", "--m", "4", "--k", "8", "--n", "8", "--emit", &bin,
    ];
    assert_eq!(m4c(&gemm).status.code(), Some(0));
    assert_eq!(
        m4c(&["npu", "disasm", &bin, "-o", &text]).status.code(),
        Some(0)
    );
    assert_refused(
        &c,
        &["npu", "disasm", &bin, "-o", &bin],
        "g.npub",
        "is the input",
    );
    assert_refused(
        &c,
        &["npu", "asm", &text, "-o", &text],
        "g.s",
        "is the input",
    );
}

#[test]
fn coverage_out_is_a_model_file() {
    let c = model_case();
    let args = ["coverage", &c.s(MODEL), "--out", &c.s(MODEL)];
    assert_refused(&c, &args, MODEL, "not a directory");
}

#[test]
fn coverage_out_that_cannot_be_made_leaves_nothing() {
    let c = model_case();
    let out = c.s("missing/report");
    let args = ["coverage", &c.s(MODEL), "--out", &out];
    assert_refused(&c, &args, "missing/report", "cannot write");
}

#[test]
fn coverage_out_writes_a_whole_new_directory() {
    let c = model_case();
    let out = c.path("report");
    let o = m4c(&["coverage", &c.s(MODEL), "--out", out.to_str().unwrap()]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "coverage.json",
            "coverage.md",
            "frequency.svg",
            "growth.svg"
        ]
    );
    let hidden: Vec<_> = std::fs::read_dir(c.dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('.')
        })
        .collect();
    assert!(hidden.is_empty(), "{hidden:?}");
}

#[test]
fn compile_output_that_exists_is_refused() {
    let c = model_case();
    std::fs::create_dir(c.path("art")).unwrap();
    let args = ["compile", &c.s(MODEL), "-o", &c.s("art")];
    assert_refused(&c, &args, "art", "already exists");
}

#[test]
fn keygen_never_replaces_a_key() {
    let c = Case::new(&[]);
    let key = c.s("k");
    assert_eq!(m4c(&["keygen", "-o", &key]).status.code(), Some(0));
    assert_refused(&c, &["keygen", "-o", &key], "k", "it exists");
    // A planted KEY.pub stops it too, and no secret is left without it.
    std::fs::write(c.path("j.pub"), b"planted").unwrap();
    assert_refused(&c, &["keygen", "-o", &c.s("j")], "j.pub", "it exists");
}

#[test]
fn keygen_writes_a_private_secret_and_a_public_key() {
    use std::os::unix::fs::PermissionsExt;
    let c = Case::new(&[]);
    let o = m4c(&["keygen", "-o", &c.s("k")]);
    assert_eq!(o.status.code(), Some(0));
    let mode = std::fs::metadata(c.path("k")).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "secret key mode {mode:o}");
    let secret = m4c_runtime::bundle::sign::SecretKey::read(&c.path("k")).unwrap();
    let public = m4c_runtime::bundle::sign::PublicKey::read(&c.path("k.pub")).unwrap();
    assert_eq!(secret.public(), public);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains(&public.fingerprint()), "{out}");
    assert_eq!(c.snapshot().len(), 2);
}

/// `y = x + w` over `n` floats: a firmware of it is `4n` bytes of weights.
fn write_big_model(path: &Path, n: usize) {
    let vi = |name: &str| pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: 1,
                shape: Some(pb::TensorShapeProto {
                    dim: vec![pb::tensor_shape_proto::Dimension {
                        value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(n as i64)),
                        ..Default::default()
                    }],
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let weight = pb::TensorProto {
        name: "w".into(),
        dims: vec![n as i64],
        data_type: 1,
        raw_data: (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect(),
        ..Default::default()
    };
    let model = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(pb::GraphProto {
            name: "big".into(),
            node: vec![pb::NodeProto {
                op_type: "Add".into(),
                name: "add".into(),
                input: vec!["x".into(), "w".into()],
                output: vec!["y".into()],
                ..Default::default()
            }],
            initializer: vec![weight],
            input: vec![vi("x")],
            output: vec![vi("y")],
            ..Default::default()
        }),
        ..Default::default()
    };
    std::fs::write(path, model.encode_to_vec()).unwrap();
}

#[test]
fn sigint_while_writing_a_firmware_leaves_no_temporary() {
    use std::os::unix::process::ExitStatusExt;
    let c = Case::new(&[]);
    let model = c.path("big.onnx");
    write_big_model(&model, 16 << 20);
    let before = c.snapshot();
    let module = format!("m={}", model.display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_m4c"))
        .args(["firmware", "build", "--no-opt", "--module", &module, "-o"])
        .arg(c.path("M4.fw"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the temporary to appear, then interrupt the write.
    let mut seen = None;
    while child.try_wait().unwrap().is_none() {
        let hidden = std::fs::read_dir(c.dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| n.starts_with('.'));
        if let Some(name) = hidden {
            // SAFETY: `kill` on our own child's pid has no memory effects.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            seen = Some(name);
            break;
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    let status = child.wait().unwrap();
    let name = seen.expect("the build ended before its temporary was seen; enlarge the model");
    assert!(
        name.starts_with(".M4.fw.") && name.ends_with(".tmp"),
        "{name}"
    );
    assert_eq!(status.signal(), Some(libc::SIGINT), "{status:?}");
    assert_eq!(
        c.snapshot().keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
}
