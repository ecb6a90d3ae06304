//! Hostile models never hurt: one named case per malformed or oversized
//! ONNX model (built here with prost). Each is run through `m4c run`, which
//! must exit 2 with exactly one `error:` line naming the file, the node and
//! the problem, print no panic, write no output and leave the model file
//! unchanged; and through `m4c inspect`, which lists the node it cannot
//! lower with the same reason (exit 0) or fails the same way as `run`. Models whose problem lies in runtime data (an index out
//! of range, an integer division by zero) lower cleanly, so `inspect`
//! succeeds, and `run` fails the same way on the interpreter and on the CPU
//! backend.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use m4c_compiler::onnx::pb;
use m4c_ir::Tensor;
use m4c_ops::Value;
use prost::Message;

const F32: i32 = 1;
const I64: i32 = 7;

/// A model: graph inputs (name, element type, shape), initializers, nodes.
struct Model {
    opset: i64,
    inputs: Vec<(&'static str, i32, Vec<i64>)>,
    inits: Vec<pb::TensorProto>,
    nodes: Vec<pb::NodeProto>,
}

fn model(opset: i64, inputs: Vec<(&'static str, i32, Vec<i64>)>) -> Model {
    Model {
        opset,
        inputs,
        inits: vec![],
        nodes: vec![],
    }
}

impl Model {
    fn init(mut self, t: pb::TensorProto) -> Self {
        self.inits.push(t);
        self
    }

    fn node(mut self, op: &str, inputs: &[&str], attrs: Vec<pb::AttributeProto>) -> Self {
        self.nodes.push(pb::NodeProto {
            op_type: op.into(),
            name: format!("bad_{}", op.to_lowercase()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec!["y".into()],
            attribute: attrs,
            ..Default::default()
        });
        self
    }

    /// A node with explicit outputs (for chains and duplicate producers).
    fn node_to(mut self, op: &str, inputs: &[&str], output: &str) -> Self {
        self.nodes.push(pb::NodeProto {
            op_type: op.into(),
            name: format!("n_{output}"),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            ..Default::default()
        });
        self
    }

    fn encode(&self) -> Vec<u8> {
        let vi = |name: &str, elem: i32, shape: Option<&[i64]>| pb::ValueInfoProto {
            name: name.into(),
            r#type: Some(pb::TypeProto {
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: elem,
                    shape: shape.map(|s| pb::TensorShapeProto {
                        dim: s
                            .iter()
                            .map(|&d| pb::tensor_shape_proto::Dimension {
                                value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(d)),
                                ..Default::default()
                            })
                            .collect(),
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        };
        pb::ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: self.opset,
            }],
            graph: Some(pb::GraphProto {
                name: "g".into(),
                node: self.nodes.clone(),
                initializer: self.inits.clone(),
                input: self
                    .inputs
                    .iter()
                    .map(|(n, e, s)| vi(n, *e, Some(s)))
                    .collect(),
                output: vec![vi("y", F32, None)],
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec()
    }
}

fn f32s(name: &str, dims: &[i64], values: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: F32,
        float_data: values.to_vec(),
        ..Default::default()
    }
}

fn i64s(name: &str, dims: &[i64], values: &[i64]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: I64,
        int64_data: values.to_vec(),
        ..Default::default()
    }
}

/// `n` zeros of shape `dims` as an f32 initializer.
fn zeros(name: &str, dims: &[i64]) -> pb::TensorProto {
    let n: i64 = dims.iter().product();
    f32s(name, dims, &vec![0.0; n as usize])
}

fn int(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: 2,
        i: v,
        ..Default::default()
    }
}

fn ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: 7,
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn m4c(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_m4c"))
        .args(args)
        .output()
        .unwrap()
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("m4c-hostile-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Asserts exit 2 and one `error:` line naming `file` and every needle.
fn assert_error(out: &Output, file: &str, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.trim_end().lines().collect();
    let errors = lines.iter().filter(|l| l.starts_with("error:")).count();
    assert_eq!(errors, 1, "not one error line: {err}");
    let line = lines.iter().find(|l| l.starts_with("error:")).unwrap();
    assert!(line.contains(file), "file not named: {err}");
    for n in needles {
        assert!(line.contains(n), "missing `{n}` in: {err}");
    }
}

/// Writes `m` as `TAG.onnx` and an `.npz` with `values` (zeros for inputs
/// not given), returning (model, inputs, output) paths.
fn prepare(tag: &str, m: &Model, values: &[(&str, Value)]) -> (PathBuf, PathBuf, PathBuf) {
    let d = scratch(tag);
    let model = d.join(format!("{tag}.onnx"));
    std::fs::write(&model, m.encode()).unwrap();
    let arrays: Vec<(String, Value)> = m
        .inputs
        .iter()
        .map(|(name, elem, shape)| {
            let given = values
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone());
            let v = given.unwrap_or_else(|| {
                let s: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
                let n = s.iter().product();
                let t = match *elem {
                    I64 => Tensor::from_i64(&s, &vec![0; n]),
                    _ => Tensor::from_f32(&s, &vec![0.0; n]),
                };
                Value::from_tensor(&t).unwrap()
            });
            (name.to_string(), v)
        })
        .collect();
    let inputs = d.join(format!("{tag}.inputs.npz"));
    m4c_runtime::write_npz(&inputs, &[], &arrays).unwrap();
    (model, inputs, d.join(format!("{tag}.out.npz")))
}

fn run(model: &Path, inputs: &Path, out: &Path, backend: &str) -> Output {
    m4c(&[
        "run".as_ref(),
        model.as_os_str(),
        "--inputs".as_ref(),
        inputs.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
        "--backend".as_ref(),
        backend.as_ref(),
    ])
}

/// `inspect` on a model that cannot be lowered: either the model report
/// with an `unsupported` line giving every needle (exit 0), or the same
/// one-line error as `run`; never a panic.
fn assert_inspect_reports(out: &Output, file: &str, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    if out.status.code() == Some(2) {
        return assert_error(out, file, needles);
    }
    assert_eq!(out.status.code(), Some(0), "stderr: {err}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(file), "file not named: {text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("unsupported"))
        .unwrap_or_else(|| panic!("no unsupported line: {text}"));
    for n in needles {
        assert!(line.contains(n), "missing `{n}` in: {line}");
    }
}

/// A model that must be refused while lowering: `run` gives the one-line
/// error naming the file and every needle, `inspect` reports the same.
fn refused(tag: &str, m: Model, needles: &[&str]) {
    let (model, inputs, out) = prepare(tag, &m, &[]);
    let before = std::fs::read(&model).unwrap();
    let file = format!("{tag}.onnx");
    assert_inspect_reports(
        &m4c(&["inspect".as_ref(), model.as_os_str()]),
        &file,
        needles,
    );
    assert_error(&run(&model, &inputs, &out, "reference"), &file, needles);
    assert_eq!(std::fs::read(&model).unwrap(), before, "model changed");
    assert!(!out.exists(), "output written");
    remove_scratch(&model);
}

/// Removes the case's scratch folder (kept when the case fails).
fn remove_scratch(model: &Path) {
    if let Some(dir) = model.parent() {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// A model that lowers but whose runtime data is out of the operator's
/// domain: `inspect` succeeds; `run` errors naming every needle on the
/// interpreter and on the CPU backend alike.
fn fails_at_run(tag: &str, m: Model, values: &[(&str, Value)], needles: &[&str]) {
    let (model, inputs, out) = prepare(tag, &m, values);
    let before = std::fs::read(&model).unwrap();
    let file = format!("{tag}.onnx");
    let ok = m4c(&["inspect".as_ref(), model.as_os_str()]);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    for backend in ["reference", "cpu"] {
        assert_error(&run(&model, &inputs, &out, backend), &file, needles);
        assert!(!out.exists(), "output written by {backend}");
    }
    assert_eq!(std::fs::read(&model).unwrap(), before, "model changed");
    remove_scratch(&model);
}

fn image() -> Model {
    model(13, vec![("x", F32, vec![1, 4, 4, 4])])
}

fn i64_value(shape: &[usize], v: &[i64]) -> Value {
    Value::from_tensor(&Tensor::from_i64(shape, v)).unwrap()
}

// ---- Conv / ConvTranspose -------------------------------------------------

#[test]
fn conv_weight_rank_1() {
    let m = image()
        .init(zeros("w", &[3]))
        .node("Conv", &["x", "w"], vec![]);
    refused("conv_w1", m, &["Conv", "bad_conv", "weight [3] has rank 1"]);
}

#[test]
fn conv_weight_rank_3() {
    let m = image()
        .init(zeros("w", &[2, 4, 3]))
        .node("Conv", &["x", "w"], vec![]);
    refused("conv_w3", m, &["Conv", "has rank 3"]);
}

#[test]
fn conv_transpose_weight_rank_1() {
    let m = image()
        .init(zeros("w", &[4]))
        .node("ConvTranspose", &["x", "w"], vec![]);
    refused("convt_w1", m, &["ConvTranspose", "has rank 1"]);
}

#[test]
fn conv_transpose_weight_rank_3() {
    let m = image()
        .init(zeros("w", &[4, 1, 3]))
        .node("ConvTranspose", &["x", "w"], vec![]);
    refused("convt_w3", m, &["ConvTranspose", "has rank 3"]);
}

#[test]
fn conv_kernel_shape_huge() {
    let m = image().init(zeros("w", &[2, 4, 3, 3])).node(
        "Conv",
        &["x", "w"],
        vec![ints("kernel_shape", &[1_000_000, 1_000_000])],
    );
    refused(
        "conv_kbig",
        m,
        &["kernel_shape [1000000, 1000000] does not match"],
    );
}

#[test]
fn conv_kernel_shape_mismatch() {
    let m = image().init(zeros("w", &[2, 4, 3, 3])).node(
        "Conv",
        &["x", "w"],
        vec![ints("kernel_shape", &[2, 2])],
    );
    refused(
        "conv_kmis",
        m,
        &["kernel_shape [2, 2] does not match the weight"],
    );
}

#[test]
fn conv_group_zero() {
    let m =
        image()
            .init(zeros("w", &[2, 4, 3, 3]))
            .node("Conv", &["x", "w"], vec![int("group", 0)]);
    refused("conv_g0", m, &["group 0 must be ≥ 1"]);
}

#[test]
fn conv_group_negative() {
    let m =
        image()
            .init(zeros("w", &[2, 4, 3, 3]))
            .node("Conv", &["x", "w"], vec![int("group", -2)]);
    refused("conv_gneg", m, &["group -2"]);
}

#[test]
fn conv_group_not_dividing_channels() {
    let m =
        image()
            .init(zeros("w", &[2, 1, 3, 3]))
            .node("Conv", &["x", "w"], vec![int("group", 3)]);
    refused("conv_g3", m, &["do not fit group 3"]);
}

#[test]
fn conv_negative_pads() {
    let m = image().init(zeros("w", &[2, 4, 3, 3])).node(
        "Conv",
        &["x", "w"],
        vec![ints("pads", &[-1, 0, 0, 0])],
    );
    refused(
        "conv_padneg",
        m,
        &["pads [-1, 0, 0, 0] has a negative entry"],
    );
}

#[test]
fn conv_pads_wrong_length() {
    let m = image().init(zeros("w", &[2, 4, 3, 3])).node(
        "Conv",
        &["x", "w"],
        vec![ints("pads", &[1, 1])],
    );
    refused("conv_padlen", m, &["pads [1, 1] needs 4 entries"]);
}

#[test]
fn conv_pads_two_to_the_forty() {
    let p = 1i64 << 40;
    let m = image().init(zeros("w", &[2, 4, 3, 3])).node(
        "Conv",
        &["x", "w"],
        vec![ints("pads", &[p, p, p, p])],
    );
    refused(
        "conv_padhuge",
        m,
        &[
            "Conv",
            "padded input",
            "[1, 4, 2199023255556, 2199023255556] overflows",
        ],
    );
}

#[test]
fn conv_huge_pads_with_huge_strides() {
    // The output is small; the padded input the window reads is not.
    let p = 1i64 << 40;
    let m = image().init(zeros("w", &[2, 4, 3, 3])).node(
        "Conv",
        &["x", "w"],
        vec![ints("pads", &[p, p, p, p]), ints("strides", &[p, p])],
    );
    refused("conv_padstride", m, &["padded input", "overflows"]);
}

#[test]
fn conv_zero_stride() {
    let m = image().init(zeros("w", &[2, 4, 3, 3])).node(
        "Conv",
        &["x", "w"],
        vec![ints("strides", &[0, 1])],
    );
    refused("conv_s0", m, &["strides [0, 1] must be 2 positive entries"]);
}

#[test]
fn conv_huge_dilation() {
    let m = image().init(zeros("w", &[2, 4, 3, 3])).node(
        "Conv",
        &["x", "w"],
        vec![ints("dilations", &[1 << 62, 1])],
    );
    refused(
        "conv_dil",
        m,
        &["kernel extent 9223372036854775809 is larger than the padded input"],
    );
}

#[test]
fn conv_kernel_larger_than_input() {
    let m = image()
        .init(zeros("w", &[2, 4, 9, 9]))
        .node("Conv", &["x", "w"], vec![]);
    refused(
        "conv_kfit",
        m,
        &["kernel extent 9 is larger than the padded input (4)"],
    );
}

#[test]
fn conv_input_rank_2() {
    let m = model(13, vec![("x", F32, vec![1, 4])])
        .init(zeros("w", &[2, 4]))
        .node("Conv", &["x", "w"], vec![]);
    refused("conv_x2", m, &["input has rank 2"]);
}

#[test]
fn conv_transpose_group_zero() {
    let m = image().init(zeros("w", &[4, 1, 3, 3])).node(
        "ConvTranspose",
        &["x", "w"],
        vec![int("group", 0)],
    );
    refused("convt_g0", m, &["ConvTranspose", "group 0"]);
}

#[test]
fn conv_transpose_output_padding_too_large() {
    let m = image().init(zeros("w", &[4, 1, 3, 3])).node(
        "ConvTranspose",
        &["x", "w"],
        vec![ints("output_padding", &[5, 0])],
    );
    refused("convt_opad", m, &["output_padding [5, 0] must be smaller"]);
}

#[test]
fn conv_transpose_empty_kernel_axis() {
    let m = image()
        .init(zeros("w", &[4, 1, 0, 3]))
        .node("ConvTranspose", &["x", "w"], vec![]);
    refused("convt_k0", m, &["empty spatial axis"]);
}

// ---- Normalisation and pooling --------------------------------------------

#[test]
fn batch_norm_rank_1_input() {
    let m = model(13, vec![("x", F32, vec![4])])
        .init(zeros("s", &[4]))
        .node("BatchNormalization", &["x", "s", "s", "s", "s"], vec![]);
    refused("bn_r1", m, &["BatchNormalization", "input has rank 1"]);
}

#[test]
fn batch_norm_scalar_input() {
    let m = model(13, vec![("x", F32, vec![])])
        .init(zeros("s", &[1]))
        .node("BatchNormalization", &["x", "s", "s", "s", "s"], vec![]);
    refused("bn_r0", m, &["input has rank 0"]);
}

#[test]
fn batch_norm_parameter_not_per_channel() {
    let m = image().init(zeros("s", &[4])).init(zeros("v", &[3])).node(
        "BatchNormalization",
        &["x", "s", "s", "s", "v"],
        vec![],
    );
    refused("bn_param", m, &["input 4 is [3], must be [C] = [4]"]);
}

#[test]
fn instance_norm_rank_1_input() {
    let m = model(13, vec![("x", F32, vec![4])])
        .init(zeros("s", &[4]))
        .node("InstanceNormalization", &["x", "s", "s"], vec![]);
    refused("in_r1", m, &["InstanceNormalization", "input has rank 1"]);
}

#[test]
fn global_average_pool_rank_1_input() {
    let m = model(13, vec![("x", F32, vec![4])]).node("GlobalAveragePool", &["x"], vec![]);
    refused("gap_r1", m, &["GlobalAveragePool", "input has rank 1"]);
}

#[test]
fn global_max_pool_scalar_input() {
    let m = model(13, vec![("x", F32, vec![])]).node("GlobalMaxPool", &["x"], vec![]);
    refused("gmp_r0", m, &["GlobalMaxPool", "input has rank 0"]);
}

#[test]
fn max_pool_kernel_zero() {
    let m = image().node("MaxPool", &["x"], vec![ints("kernel_shape", &[0, 2])]);
    refused("mp_k0", m, &["MaxPool", "empty spatial axis"]);
}

#[test]
fn average_pool_negative_kernel() {
    let m = image().node("AveragePool", &["x"], vec![ints("kernel_shape", &[-2, 2])]);
    refused("ap_kneg", m, &["kernel_shape [-2, 2] has a negative entry"]);
}

#[test]
fn max_pool_kernel_rank_mismatch() {
    let m = image().node("MaxPool", &["x"], vec![ints("kernel_shape", &[2])]);
    refused(
        "mp_krank",
        m,
        &["kernel_shape [2] does not match the input"],
    );
}

// ---- Indexing -----------------------------------------------------------------

#[test]
fn gather_on_scalar_data() {
    let m = model(13, vec![])
        .init(f32s("d", &[], &[1.0]))
        .init(i64s("i", &[1], &[0]))
        .node("Gather", &["d", "i"], vec![]);
    refused("gather_r0", m, &["Gather", "data has rank 0"]);
}

#[test]
fn gather_elements_on_scalar_data() {
    let m = model(13, vec![])
        .init(f32s("d", &[], &[1.0]))
        .init(i64s("i", &[], &[0]))
        .node("GatherElements", &["d", "i"], vec![]);
    refused("gel_r0", m, &["GatherElements", "data has rank 0"]);
}

#[test]
fn gather_constant_index_out_of_range() {
    let m = model(13, vec![("x", F32, vec![4])])
        .init(i64s("i", &[1], &[7]))
        .node("Gather", &["x", "i"], vec![]);
    refused("gather_oob", m, &["index 7 out of range"]);
}

#[test]
fn unsqueeze_duplicate_axes() {
    let m = model(13, vec![("x", F32, vec![4])])
        .init(i64s("a", &[2], &[0, 0]))
        .node("Unsqueeze", &["x", "a"], vec![]);
    refused(
        "unsq_dup",
        m,
        &["Unsqueeze", "axes [0, 0] has a repeated axis"],
    );
}

#[test]
fn transpose_perm_too_short() {
    let m = image().node("Transpose", &["x"], vec![ints("perm", &[1, 0])]);
    refused(
        "tr_short",
        m,
        &["perm [1, 0] is not a permutation of the 4 axes"],
    );
}

#[test]
fn transpose_perm_repeated_axis() {
    let m = image().node("Transpose", &["x"], vec![ints("perm", &[0, 0, 1, 2])]);
    refused("tr_rep", m, &["is not a permutation"]);
}

// ---- Shapes from data: negative, overflowing, over the budget ---------------

#[test]
fn constant_of_shape_negative() {
    let m = model(13, vec![])
        .init(i64s("s", &[1], &[-3]))
        .node("ConstantOfShape", &["s"], vec![]);
    refused(
        "cos_neg",
        m,
        &["ConstantOfShape", "shape [-3] has a negative entry"],
    );
}

#[test]
fn constant_of_shape_huge() {
    let m = model(13, vec![])
        .init(i64s("s", &[3], &[1_000_000, 1_000_000, 1_000_000]))
        .node("ConstantOfShape", &["s"], vec![]);
    refused("cos_huge", m, &["ConstantOfShape", "memory budget"]);
}

#[test]
fn constant_of_shape_size_overflows() {
    let m = model(13, vec![])
        .init(i64s("s", &[2], &[1 << 62, 1 << 62]))
        .node("ConstantOfShape", &["s"], vec![]);
    refused("cos_ovf", m, &["overflows"]);
}

#[test]
fn range_huge() {
    let m = model(13, vec![])
        .init(i64s("a", &[], &[0]))
        .init(i64s("b", &[], &[1 << 60]))
        .init(i64s("c", &[], &[1]))
        .node("Range", &["a", "b", "c"], vec![]);
    refused("range_huge", m, &["Range", "memory budget"]);
}

#[test]
fn range_extreme_limits() {
    let m = model(13, vec![])
        .init(i64s("a", &[], &[i64::MIN]))
        .init(i64s("b", &[], &[i64::MAX]))
        .init(i64s("c", &[], &[1]))
        .node("Range", &["a", "b", "c"], vec![]);
    refused("range_ext", m, &["Range", "overflows"]);
}

#[test]
fn range_float_zero_delta() {
    let m = model(13, vec![])
        .init(f32s("a", &[], &[0.0]))
        .init(f32s("b", &[], &[1.0]))
        .init(f32s("c", &[], &[0.0]))
        .node("Range", &["a", "b", "c"], vec![]);
    refused("range_d0", m, &["no finite element count"]);
}

#[test]
fn range_empty_start() {
    let m = model(13, vec![])
        .init(i64s("a", &[0], &[]))
        .init(i64s("b", &[], &[4]))
        .init(i64s("c", &[], &[1]))
        .node("Range", &["a", "b", "c"], vec![]);
    refused("range_empty", m, &["needs a scalar, got 0 elements"]);
}

#[test]
fn expand_huge() {
    let m = model(13, vec![("x", F32, vec![1])])
        .init(i64s("s", &[3], &[100_000, 100_000, 100_000]))
        .node("Expand", &["x", "s"], vec![]);
    refused("expand_huge", m, &["Expand", "memory budget"]);
}

#[test]
fn expand_negative() {
    let m = model(13, vec![("x", F32, vec![1])])
        .init(i64s("s", &[1], &[-4]))
        .node("Expand", &["x", "s"], vec![]);
    refused("expand_neg", m, &["shape [-4] has a negative entry"]);
}

#[test]
fn tile_huge() {
    let m = model(13, vec![("x", F32, vec![4])])
        .init(i64s("r", &[1], &[1 << 40]))
        .node("Tile", &["x", "r"], vec![]);
    refused("tile_huge", m, &["Tile", "memory budget"]);
}

#[test]
fn tile_negative_repeats() {
    let m = model(13, vec![("x", F32, vec![4])])
        .init(i64s("r", &[1], &[-2]))
        .node("Tile", &["x", "r"], vec![]);
    refused("tile_neg", m, &["repeats [-2] has a negative entry"]);
}

#[test]
fn pad_huge() {
    let m = model(13, vec![("x", F32, vec![4])])
        .init(i64s("p", &[2], &[1 << 40, 1 << 40]))
        .node("Pad", &["x", "p"], vec![]);
    refused("pad_huge", m, &["Pad", "memory budget"]);
}

#[test]
fn pad_overflows() {
    let m = model(13, vec![("x", F32, vec![4])])
        .init(i64s("p", &[2], &[i64::MAX, i64::MAX]))
        .node("Pad", &["x", "p"], vec![]);
    refused("pad_ovf", m, &["overflow"]);
}

#[test]
fn resize_huge() {
    let m = image()
        .init(f32s("roi", &[0], &[]))
        .init(f32s("sc", &[0], &[]))
        .init(i64s("sz", &[4], &[1, 4, 1_000_000, 1_000_000]))
        .node("Resize", &["x", "roi", "sc", "sz"], vec![]);
    refused("resize_huge", m, &["Resize", "memory budget"]);
}

#[test]
fn resize_negative_sizes() {
    let m = image()
        .init(f32s("roi", &[0], &[]))
        .init(f32s("sc", &[0], &[]))
        .init(i64s("sz", &[4], &[1, 4, -8, 8]))
        .node("Resize", &["x", "roi", "sc", "sz"], vec![]);
    refused(
        "resize_neg",
        m,
        &["Resize", "sizes [1, 4, -8, 8] has a negative entry"],
    );
}

#[test]
fn space_to_depth_blocksize_overflows() {
    let m = model(13, vec![("x", F32, vec![1, 2, 0, 0])]).node(
        "SpaceToDepth",
        &["x"],
        vec![int("blocksize", 1 << 32)],
    );
    refused("s2d_big", m, &["SpaceToDepth", "blocksize 4294967296"]);
}

#[test]
fn reshape_shape_overflows() {
    let m = model(13, vec![("x", F32, vec![4])])
        .init(i64s("s", &[3], &[-1, 1 << 62, 8]))
        .node("Reshape", &["x", "s"], vec![]);
    refused("reshape_ovf", m, &["Reshape", "overflows"]);
}

#[test]
fn split_negative_sizes() {
    let m = model(13, vec![("x", F32, vec![4])])
        .init(i64s("s", &[2], &[6, -2]))
        .node("Split", &["x", "s"], vec![]);
    refused("split_neg", m, &["split [6, -2] has a negative entry"]);
}

/// Found by the `onnx_lower` fuzz target: Split of a scalar indexed the
/// shape at the axis.
#[test]
fn split_of_a_scalar() {
    let m = model(18, vec![("x", F32, vec![])]).node("Split", &["x"], vec![int("num_outputs", 1)]);
    refused(
        "split_scalar",
        m,
        &["Split", "input has rank 0 ([]), needs rank ≥ 1"],
    );
}

#[test]
fn slice_of_a_scalar() {
    let m = model(13, vec![("x", F32, vec![])])
        .init(i64s("st", &[1], &[0]))
        .init(i64s("en", &[1], &[1]))
        .node("Slice", &["x", "st", "en"], vec![]);
    refused(
        "slice_scalar",
        m,
        &["Slice", "data has rank 0 ([]), needs rank ≥ 1"],
    );
}

#[test]
fn depth_to_space_blocksize_zero() {
    let m = image().node("DepthToSpace", &["x"], vec![int("blocksize", 0)]);
    refused("d2s_b0", m, &["blocksize 0 must be a positive size"]);
}

#[test]
fn lstm_weights_do_not_match_hidden_size() {
    let m = model(13, vec![("x", F32, vec![2, 1, 3])])
        .init(zeros("w", &[1, 8, 3]))
        .init(zeros("r", &[1, 8, 2]))
        .node("LSTM", &["x", "w", "r"], vec![int("hidden_size", 1 << 40)]);
    refused("lstm_h", m, &["LSTM", "input 1 is [1, 8, 3]"]);
}

#[test]
fn rnn_negative_hidden_size() {
    let m = model(13, vec![("x", F32, vec![2, 1, 3])])
        .init(zeros("w", &[1, 2, 3]))
        .init(zeros("r", &[1, 2, 2]))
        .node("RNN", &["x", "w", "r"], vec![int("hidden_size", -1)]);
    refused("rnn_hneg", m, &["hidden_size -1 must be ≥ 1"]);
}

#[test]
fn duplicate_producers() {
    let m = model(13, vec![("x", F32, vec![4])])
        .node_to("Relu", &["x"], "t")
        .node_to("Neg", &["x"], "t")
        .node_to("Relu", &["t"], "y");
    refused("dup", m, &["output 't' is already produced"]);
}

#[test]
fn node_overwrites_an_input() {
    let m = model(13, vec![("x", F32, vec![4])])
        .node_to("Relu", &["x"], "x")
        .node_to("Relu", &["x"], "y");
    refused("dup_input", m, &["output 'x' is already produced"]);
}

#[test]
fn input_declared_huge() {
    let m = model(13, vec![("x", F32, vec![1 << 40, 1 << 40])]).node("Relu", &["x"], vec![]);
    let d = scratch("input_huge");
    let model = d.join("input_huge.onnx");
    std::fs::write(&model, m.encode()).unwrap();
    assert_inspect_reports(
        &m4c(&["inspect".as_ref(), model.as_os_str()]),
        "input_huge.onnx",
        &["input 'x'", "overflows"],
    );
    remove_scratch(&model);
}

#[test]
fn input_declared_negative() {
    let m = model(13, vec![("x", F32, vec![-3])]).node("Relu", &["x"], vec![]);
    let d = scratch("input_neg");
    let model = d.join("input_neg.onnx");
    std::fs::write(&model, m.encode()).unwrap();
    let before = std::fs::read(&model).unwrap();
    assert_inspect_reports(
        &m4c(&["inspect".as_ref(), model.as_os_str()]),
        "input_neg.onnx",
        &["input 'x'", "dimension 0 is negative (-3)"],
    );
    assert_eq!(std::fs::read(&model).unwrap(), before, "model changed");
    remove_scratch(&model);
}

#[test]
fn initializer_with_negative_dims() {
    let m = model(13, vec![("x", F32, vec![4])])
        .init(f32s("w", &[-1], &[]))
        .node("Add", &["x", "w"], vec![]);
    refused("init_neg", m, &["tensor 'w': negative dimension -1"]);
}

#[test]
fn lowering_honours_the_memory_budget_option() {
    use m4c_compiler::lower::{lower, LowerOptions};
    let m = model(13, vec![("x", F32, vec![1])])
        .init(i64s("s", &[1], &[100]))
        .node("Expand", &["x", "s"], vec![]);
    let d = scratch("budget");
    let path = d.join("budget.onnx");
    std::fs::write(&path, m.encode()).unwrap();
    let onnx = m4c_compiler::onnx::OnnxModel::load(&path).unwrap();
    let small = LowerOptions {
        max_memory: 399,
        ..Default::default()
    };
    let e = lower(&onnx, &small).unwrap_err().to_string();
    assert!(
        e.contains("needs 400 bytes, over the memory budget of 399 bytes"),
        "{e}"
    );
    let enough = LowerOptions {
        max_memory: 400,
        ..Default::default()
    };
    assert!(lower(&onnx, &enough).is_ok());
    remove_scratch(&path);
}

// ---- Quantised operators --------------------------------------------------

const U8: i32 = 2;
const I8: i32 = 3;
const I32: i32 = 6;

/// A tensor of `data_type` with raw little-endian `bytes`.
fn raw(name: &str, data_type: i32, dims: &[i64], bytes: Vec<u8>) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type,
        raw_data: bytes,
        ..Default::default()
    }
}

/// `QuantizeLinear(x, s, zp)` of an image at opset 21 (per-axis and
/// blocked scales allowed), with `s` and `zp` as given.
fn quantize(s: pb::TensorProto, zp: pb::TensorProto, attrs: Vec<pb::AttributeProto>) -> Model {
    model(21, vec![("x", F32, vec![1, 4, 4, 4])])
        .init(s)
        .init(zp)
        .node("QuantizeLinear", &["x", "s", "zp"], attrs)
}

/// `DequantizeLinear(q, s, zp)` of a uint8 weight `q [4, 4]` at opset 21
/// (its output added to the input, so the graph has one).
fn dequantize(
    s: pb::TensorProto,
    zp: Option<pb::TensorProto>,
    attrs: Vec<pb::AttributeProto>,
) -> Model {
    let mut m = model(21, vec![("x", F32, vec![4, 4])])
        .init(raw("q", U8, &[4, 4], (0..16).collect()))
        .init(s);
    let mut ins = vec!["q", "s"];
    if let Some(zp) = zp {
        m = m.init(zp);
        ins.push("zp");
    }
    m.node("DequantizeLinear", &ins, attrs)
}

#[test]
fn quantize_scale_zero() {
    let m = quantize(f32s("s", &[], &[0.0]), raw("zp", U8, &[], vec![0]), vec![]);
    refused(
        "q_s0",
        m,
        &[
            "QuantizeLinear",
            "bad_quantizelinear",
            "scale 's' holds 0",
            "positive and finite",
        ],
    );
}

#[test]
fn quantize_scale_negative() {
    let m = quantize(f32s("s", &[], &[-0.5]), raw("zp", U8, &[], vec![0]), vec![]);
    refused("q_sneg", m, &["scale 's' holds -0.5"]);
}

#[test]
fn dequantize_scale_nan() {
    let m = dequantize(f32s("s", &[], &[f32::NAN]), None, vec![]);
    refused(
        "dq_snan",
        m,
        &[
            "DequantizeLinear",
            "bad_dequantizelinear",
            "scale 's' holds NaN",
        ],
    );
}

#[test]
fn quantize_zero_point_of_a_float_type() {
    let m = quantize(f32s("s", &[], &[0.5]), f32s("zp", &[], &[0.0]), vec![]);
    refused(
        "q_zpf",
        m,
        &["zero point 'zp' is f32", "int8, uint8, int4 or uint4"],
    );
}

#[test]
fn dequantize_zero_point_of_another_type() {
    let m = dequantize(
        f32s("s", &[], &[0.5]),
        Some(raw("zp", I8, &[], vec![0])),
        vec![],
    );
    refused(
        "dq_zpty",
        m,
        &["zero point 'zp' is i8, the quantised tensor is u8"],
    );
}

#[test]
fn dequantize_int32_zero_point_out_of_range() {
    let m = model(21, vec![("x", F32, vec![2])])
        .init(raw(
            "q",
            I32,
            &[2],
            [5i32, 6].iter().flat_map(|v| v.to_le_bytes()).collect(),
        ))
        .init(f32s("s", &[], &[0.5]))
        .init(raw("zp", I32, &[], 7i32.to_le_bytes().to_vec()))
        .node("DequantizeLinear", &["q", "s", "zp"], vec![]);
    refused(
        "dq_zp32",
        m,
        &["zero point 'zp' of an int32 x must be a constant 0"],
    );
}

#[test]
fn dequantize_axis_out_of_range() {
    let m = dequantize(f32s("s", &[4], &[0.5; 4]), None, vec![int("axis", 5)]);
    refused(
        "dq_axis",
        m,
        &["scale 's'", "axis 5 out of range for rank 2"],
    );
}

#[test]
fn quantize_axis_length_mismatch() {
    let m = quantize(
        f32s("s", &[3], &[0.5; 3]),
        raw("zp", U8, &[3], vec![0; 3]),
        vec![int("axis", 1)],
    );
    refused(
        "q_axislen",
        m,
        &[
            "scale 's' has shape [3]",
            "along axis 1 of x [1, 4, 4, 4] needs [4]",
        ],
    );
}

#[test]
fn dequantize_zero_point_shape_differs_from_scale() {
    let m = dequantize(
        f32s("s", &[4], &[0.5; 4]),
        Some(raw("zp", U8, &[2], vec![0; 2])),
        vec![int("axis", 0)],
    );
    refused(
        "dq_zpshape",
        m,
        &["zero point 'zp' has shape [2], its scale 's' [4]"],
    );
}

#[test]
fn quantize_negative_block_size() {
    let m = quantize(
        f32s("s", &[1, 2, 4, 4], &[0.5; 32]),
        raw("zp", U8, &[1, 2, 4, 4], vec![0; 32]),
        vec![int("block_size", -2)],
    );
    refused("q_blockneg", m, &["block_size -2 is negative"]);
}

#[test]
fn dequantize_block_size_not_matching_the_scale() {
    let m = dequantize(
        f32s("s", &[4, 2], &[0.5; 8]),
        None,
        vec![int("axis", 1), int("block_size", 4)],
    );
    refused(
        "dq_block",
        m,
        &["scale 's' has shape [4, 2], blocks of 4 along axis 1 of x [4, 4] need [4, 1]"],
    );
}

#[test]
fn qlinear_matmul_zero_point_not_per_column() {
    // B is [3, 2]: its zero point has one element or one per column (2).
    let m = model(13, vec![("x", F32, vec![1])])
        .init(raw("a", U8, &[2, 3], vec![1; 6]))
        .init(f32s("sa", &[], &[0.1]))
        .init(raw("za", U8, &[], vec![0]))
        .init(raw("b", U8, &[3, 2], vec![2; 6]))
        .init(f32s("sb", &[], &[0.1]))
        .init(raw("zb", U8, &[3], vec![0; 3]))
        .init(f32s("sy", &[], &[0.1]))
        .init(raw("zy", U8, &[], vec![0]))
        .node(
            "QLinearMatMul",
            &["a", "sa", "za", "b", "sb", "zb", "sy", "zy"],
            vec![],
        );
    refused(
        "qlmm_zp",
        m,
        &["QLinearMatMul", "'zb' has shape [3]", "axis 1 of [3, 2]"],
    );
}

/// `com.microsoft.MatMulNBits` of an input `a [1, K]` with the given
/// attributes and packed weight `b`, scales `s` (f32).
fn nbits(k: i64, bits: i64, block: i64, b_shape: &[i64], scales: usize) -> Model {
    let n: i64 = 2;
    let bytes: i64 = b_shape.iter().product();
    let mut m = model(13, vec![("a", F32, vec![1, k])])
        .init(raw("b", U8, b_shape, vec![0x88; bytes as usize]))
        .init(f32s("s", &[scales as i64], &vec![0.1; scales]));
    m.nodes.push(pb::NodeProto {
        op_type: "MatMulNBits".into(),
        domain: "com.microsoft".into(),
        name: "bad_nbits".into(),
        input: vec!["a".into(), "b".into(), "s".into()],
        output: vec!["y".into()],
        attribute: vec![
            int("K", k),
            int("N", n),
            int("bits", bits),
            int("block_size", block),
        ],
        ..Default::default()
    });
    m
}

#[test]
fn matmul_nbits_bits_three() {
    refused(
        "nbits_bits",
        nbits(32, 3, 32, &[2, 1, 12], 2),
        &["MatMulNBits", "bad_nbits", "bits = 3 is not supported"],
    );
}

#[test]
fn matmul_nbits_accuracy_level_out_of_range() {
    let mut m = nbits(32, 4, 32, &[2, 1, 16], 2);
    m.nodes[0].attribute.push(int("accuracy_level", 7));
    refused(
        "nbits_accuracy",
        m,
        &["MatMulNBits", "bad_nbits", "accuracy_level = 7 is not 0–4"],
    );
}

#[test]
fn matmul_nbits_block_size_not_a_power_of_two() {
    refused(
        "nbits_block",
        nbits(48, 4, 24, &[2, 2, 12], 4),
        &["block_size = 24 must be a power of two"],
    );
}

#[test]
fn matmul_nbits_block_size_two_to_the_sixty_two() {
    refused(
        "nbits_huge",
        nbits(64, 4, 1 << 62, &[2, 2, 16], 4),
        &["block_size = 4611686018427387904 overflows"],
    );
}

#[test]
fn matmul_nbits_weight_not_matching_k() {
    // K = 64 in blocks of 32 needs B u8[2, 2, 16]; it has one block.
    refused(
        "nbits_k",
        nbits(64, 4, 32, &[2, 1, 16], 4),
        &["B 'b' is u8[2, 1, 16]", "need u8[2, 2, 16]"],
    );
}

#[test]
fn matmul_nbits_too_few_scales() {
    refused(
        "nbits_scales",
        nbits(64, 4, 32, &[2, 2, 16], 3),
        &["scales 's' are f32[3]", "N·blocks = 4 elements"],
    );
}

// ---- Runtime data: every engine errors ------------------------------------

#[test]
fn gather_runtime_index_out_of_range() {
    let m = model(13, vec![("i", I64, vec![2])])
        .init(f32s("d", &[4], &[1.0, 2.0, 3.0, 4.0]))
        .node("Gather", &["d", "i"], vec![]);
    let i = i64_value(&[2], &[1, 9]);
    fails_at_run("gather_rt", m, &[("i", i)], &["index", "out of range"]);
}

#[test]
fn gather_runtime_negative_index_out_of_range() {
    let m = model(13, vec![("i", I64, vec![1])])
        .init(f32s("d", &[4], &[1.0, 2.0, 3.0, 4.0]))
        .node("Gather", &["d", "i"], vec![]);
    let i = i64_value(&[1], &[-5]);
    fails_at_run("gather_rtneg", m, &[("i", i)], &["index", "out of range"]);
}

#[test]
fn gather_elements_runtime_index_out_of_range() {
    // Index 2 on an axis of 2 would read the next row if not checked.
    let m = model(13, vec![("i", I64, vec![2, 1])])
        .init(f32s("d", &[2, 2], &[1.0, 2.0, 3.0, 4.0]))
        .node("GatherElements", &["d", "i"], vec![int("axis", 1)]);
    let i = i64_value(&[2, 1], &[0, 2]);
    fails_at_run("gel_rt", m, &[("i", i)], &["index", "out of range"]);
}

#[test]
fn gather_nd_runtime_index_out_of_range() {
    let m = model(13, vec![("i", I64, vec![1, 2])])
        .init(f32s("d", &[2, 2], &[1.0, 2.0, 3.0, 4.0]))
        .node("GatherND", &["d", "i"], vec![]);
    let i = i64_value(&[1, 2], &[0, 2]);
    fails_at_run("gnd_rt", m, &[("i", i)], &["index", "out of range"]);
}

#[test]
fn integer_division_by_zero() {
    let m =
        model(13, vec![("a", I64, vec![2]), ("b", I64, vec![2])]).node("Div", &["a", "b"], vec![]);
    let (a, b) = (i64_value(&[2], &[7, 8]), i64_value(&[2], &[2, 0]));
    fails_at_run(
        "div0",
        m,
        &[("a", a), ("b", b)],
        &["integer division by zero"],
    );
}

#[test]
fn integer_modulo_by_zero() {
    let m =
        model(13, vec![("a", I64, vec![2]), ("b", I64, vec![2])]).node("Mod", &["a", "b"], vec![]);
    let (a, b) = (i64_value(&[2], &[7, 8]), i64_value(&[2], &[0, 3]));
    fails_at_run("mod0", m, &[("a", a), ("b", b)], &["division by zero"]);
}
