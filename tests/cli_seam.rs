//! The backend seam from the command line: `m4c backends`, `m4c compile`,
//! `--const`, `.ir` files wherever a model goes, `--no-opt`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use m4c_compiler::onnx::pb;
use m4c_ops::Value;
use ndarray::ArrayD;
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

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
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
fn backends_lists_reference_and_cpu_with_their_ops() {
    let o = m4c(&["backends", "--json"]);
    let all: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["reference", "cpu", "gpu", "npu"]);
    for b in all.as_array().unwrap() {
        let ops = b["ops"].as_array().unwrap();
        assert!(ops.iter().any(|o| o == "MatMul"), "{b}");
        assert!(!b["dtypes"].as_array().unwrap().is_empty(), "{b}");
        assert!(!b["targets"].as_array().unwrap().is_empty(), "{b}");
        assert!(b["runnable"].is_boolean(), "{b}");
    }
    assert_eq!(all[0]["runnable"], true, "the interpreter runs everywhere");
    let o = m4c(&["run", "x.onnx", "--inputs", "x.npz", "--backend", "tpu"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).contains("unknown backend `tpu` (known: reference, cpu, gpu, npu)"),
        "{}",
        text(&o)
    );
}

/// The silero-VAD pattern: `If` on an integer input (the sample rate).
fn write_if_on_input(path: &Path) {
    let tensor_type = |elem: i32, dims: &[i64]| pb::TypeProto {
        value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
            elem_type: elem,
            shape: Some(pb::TensorShapeProto {
                dim: dims
                    .iter()
                    .map(|&d| pb::tensor_shape_proto::Dimension {
                        value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(d)),
                        ..Default::default()
                    })
                    .collect(),
            }),
        })),
        ..Default::default()
    };
    let vi = |name: &str, elem: i32, dims: &[i64]| pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(tensor_type(elem, dims)),
        ..Default::default()
    };
    let (f32_, i64_) = (1, 7);
    let node = |op: &str, inputs: &[&str], output: &str| pb::NodeProto {
        op_type: op.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        ..Default::default()
    };
    let scalar = |name: &str, elem: i32, f: Option<f32>, i: Option<i64>| pb::TensorProto {
        name: name.into(),
        data_type: elem,
        float_data: f.into_iter().collect(),
        int64_data: i.into_iter().collect(),
        ..Default::default()
    };
    let branch = |name: &str, nodes: Vec<pb::NodeProto>, out: &str, init| pb::GraphProto {
        name: name.into(),
        node: nodes,
        output: vec![vi(out, f32_, &[2, 3])],
        initializer: vec![init],
        ..Default::default()
    };
    let then_g = branch(
        "then",
        vec![
            node("Relu", &["x"], "r"),
            node("Mul", &["r", "two"], "then_y"),
        ],
        "then_y",
        scalar("two", f32_, Some(2.0), None),
    );
    let else_g = branch(
        "else",
        vec![node("Sub", &["x", "one"], "else_y")],
        "else_y",
        scalar("one", f32_, Some(1.0), None),
    );
    let mut if_node = node("If", &["is16k"], "y");
    for (name, g) in [("then_branch", then_g), ("else_branch", else_g)] {
        if_node.attribute.push(pb::AttributeProto {
            name: name.into(),
            r#type: pb::attribute_proto::AttributeType::Graph as i32,
            g: Some(g),
            ..Default::default()
        });
    }
    let model = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(pb::GraphProto {
            name: "vad_like".into(),
            node: vec![node("Equal", &["sr", "sr16k"], "is16k"), if_node],
            initializer: vec![scalar("sr16k", i64_, None, Some(16000))],
            input: vec![vi("x", f32_, &[2, 3]), vi("sr", i64_, &[])],
            output: vec![vi("y", f32_, &[2, 3])],
            ..Default::default()
        }),
        ..Default::default()
    };
    std::fs::write(path, model.encode_to_vec()).unwrap();
}

#[test]
fn const_pins_an_input_so_control_flow_on_it_folds() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("vad_like.onnx");
    write_if_on_input(&model);
    let x: Vec<f32> = vec![-1.5, 0.0, 0.5, 2.0, -0.25, 3.0];
    let inputs = dir.path().join("in.npz");
    let arr = |v: &[f32]| Value::F32(ArrayD::from_shape_vec(vec![2, 3], v.to_vec()).unwrap());
    m4c_runtime::write_npz(&inputs, &[], &[("x".into(), arr(&x))]).unwrap();
    // Without the pin, the condition cannot fold: a one-line error.
    let (m, i) = (model.to_str().unwrap(), inputs.to_str().unwrap());
    let o = m4c(&["run", m, "--inputs", i]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    // Expected values by hand: the ONNX semantics of each branch.
    let then_y: Vec<f32> = x.iter().map(|v| v.max(0.0) * 2.0).collect();
    let else_y: Vec<f32> = x.iter().map(|v| v - 1.0).collect();
    for backend in runnable_backends() {
        for (sr, want) in [("16000", &then_y), ("8000", &else_y)] {
            let expect = dir.path().join(format!("want_{sr}.npz"));
            m4c_runtime::write_npz(&expect, &[], &[("y".into(), arr(want))]).unwrap();
            let pin = format!("sr={sr}");
            let args = [
                "run",
                m,
                "--inputs",
                i,
                "--const",
                &pin,
                "--backend",
                &backend,
                "--expect",
            ];
            let mut args = args.to_vec();
            args.push(expect.to_str().unwrap());
            let o = m4c(&args);
            assert_eq!(o.status.code(), Some(0), "{backend} sr={sr}: {}", text(&o));
        }
    }
    for (pin, why) in [
        ("sr=16k", "'16k' is not a i64 value"),
        ("rate=1", "the model has no input 'rate'"),
        ("x=1", "only integer and bool inputs can be pinned"),
    ] {
        let o = m4c(&["run", m, "--inputs", i, "--const", pin]);
        assert_eq!(o.status.code(), Some(2), "{pin}: {}", text(&o));
        assert!(text(&o).contains(why), "{pin}: {}", text(&o));
    }
}

#[test]
fn optimised_ir_files_run_on_every_backend() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["llama_prefill", "clip_text"] {
        let ir = dir.path().join(format!("{name}.ir"));
        let model = fixture(&format!("{name}.onnx"));
        let o = m4c(&[
            "opt",
            model.to_str().unwrap(),
            "--target",
            "cpu-nominal",
            "-o",
            ir.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let (inputs, expect) = (
            fixture(&format!("{name}.inputs.npz")),
            fixture(&format!("{name}.expected.npz")),
        );
        for backend in runnable_backends() {
            let o = m4c(&[
                "run",
                ir.to_str().unwrap(),
                "--inputs",
                inputs.to_str().unwrap(),
                "--expect",
                expect.to_str().unwrap(),
                "--backend",
                &backend,
            ]);
            assert_eq!(
                o.status.code(),
                Some(0),
                "{name} on {backend}: {}",
                text(&o)
            );
        }
        let o = m4c(&["inspect", ir.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert!(text(&o).contains("(IR file)"), "{}", text(&o));
    }
}

#[test]
fn compile_writes_an_artifact_also_for_a_cross_target() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("mlp_external_data.onnx");
    let out = dir.path().join("aarch64");
    let o = m4c(&[
        "compile",
        model.to_str().unwrap(),
        "--backend",
        "cpu",
        "--target",
        "aarch64",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("artifact.json")).unwrap()).unwrap();
    assert_eq!(summary["target"], "aarch64");
    assert_eq!(summary["runnable_here"], cfg!(target_arch = "aarch64"));
    let object = std::fs::read(out.join("kernels.o")).unwrap();
    // An ELF relocatable for AArch64 (e_machine 183).
    assert_eq!(&object[..4], b"\x7fELF");
    assert_eq!(u16::from_le_bytes([object[18], object[19]]), 183);
    // The directory exists now: a second compile refuses to touch it.
    let o = m4c(&[
        "compile",
        model.to_str().unwrap(),
        "--backend",
        "cpu",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("already exists"), "{}", text(&o));
}

#[test]
fn bench_optimises_by_default_and_no_opt_skips_it() {
    let model = fixture("distilbert.onnx");
    let inputs = fixture("distilbert.inputs.npz");
    let mut optimised = vec![];
    for extra in [None, Some("--no-opt")] {
        let mut args = vec![
            "bench",
            model.to_str().unwrap(),
            "--backend",
            "reference",
            "--inputs",
            inputs.to_str().unwrap(),
            "--runs",
            "1",
            "--json",
        ];
        args.extend(extra);
        let o = m4c(&args);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        optimised.push(report["optimised"].as_bool().unwrap());
    }
    assert_eq!(optimised, [true, false]);
}

#[test]
fn inspect_prints_each_backends_refusals() {
    let o = m4c(&[
        "inspect",
        fixture("distilbert.onnx").to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let refused = doc["refused_by_backend"].as_object().unwrap();
    assert_eq!(refused["reference"].as_array().unwrap().len(), 0);
    assert!(refused.contains_key("cpu"));
}

#[test]
fn max_memory_bounds_what_lowering_may_allocate() {
    let model = fixture("distilbert.onnx");
    let inputs = fixture("distilbert.inputs.npz");
    let (m, i) = (model.to_str().unwrap(), inputs.to_str().unwrap());
    let o = m4c(&["run", m, "--inputs", i, "--max-memory", "1K"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("over the memory budget of 1024 bytes"),
        "{}",
        text(&o)
    );
    assert_eq!(String::from_utf8_lossy(&o.stderr).lines().count(), 1);
    let o = m4c(&["run", m, "--inputs", i, "--max-memory", "64M"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = m4c(&["run", m, "--inputs", i, "--max-memory", "lots"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}
