use std::path::PathBuf;

use tract_onnx::pb::{GraphProto, ValueInfoProto};

use super::*;
use crate::quantize::scheme::ActEncoding;
use crate::quantize::Calibration;

/// `y = relu(x) · W` with `W` `[4, 3]`, opset 17.
fn matmul_model() -> FloatModel {
    let w: Vec<f32> = (0..12).map(|i| i as f32 - 5.5).collect();
    FloatModel {
        path: PathBuf::from("mm.onnx"),
        proto: ModelProto {
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: 17,
            }],
            graph: Some(GraphProto {
                name: "mm".into(),
                node: vec![
                    node("Relu", "relu", &["x"], &["r"]),
                    node("MatMul", "mm", &["r", "W"], &["y"]),
                ],
                initializer: vec![tensor("W", FLOAT, &[4, 3], f32_bytes(&w))],
                input: vec![ValueInfoProto {
                    name: "x".into(),
                    ..Default::default()
                }],
                output: vec![ValueInfoProto {
                    name: "y".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        },
    }
}

fn opts(scheme: Scheme) -> Options {
    Options {
        scheme,
        per_channel: true,
        symmetric: false,
        calibration: Calibration::MinMax,
        exclude: vec![],
        smooth: None,
        head_bits: 8,
        accuracy_level: 0,
    }
}

fn rewrite(scheme: Scheme) -> (ModelProto, Plan) {
    rewrite_with(opts(scheme), None)
}

/// [`rewrite`] with options and an optional `bits` override of `mm`.
fn rewrite_with(o: Options, bits: Option<u8>) -> (ModelProto, Plan) {
    let m = matmul_model();
    let mut p = plan(&m.proto, o.scheme, &HashSet::new(), None).unwrap();
    let mut enc = Encodings::new(&m, &o);
    if bits.is_some() {
        enc.layers.insert(
            "mm".into(),
            crate::quantize::encodings::LayerOverride {
                quantize: true,
                per_channel: None,
                bits,
            },
        );
    }
    enc.activations.insert(
        "r".into(),
        ActEncoding {
            scale: 0.1,
            zero_point: -128,
            min: 0.0,
            max: 25.5,
        },
    );
    let q = quantize_graph(&m, &mut p, &o, &enc).unwrap();
    (q, p)
}

fn ops(p: &ModelProto) -> Vec<String> {
    graph(p).node.iter().map(|n| n.op_type.clone()).collect()
}

fn init<'p>(p: &'p ModelProto, name: &str) -> &'p TensorProto {
    graph(p)
        .initializer
        .iter()
        .find(|t| t.name == name)
        .unwrap()
}

#[test]
fn int8_is_qdq_on_activations_and_per_channel_weights() {
    let (q, p) = rewrite(Scheme::Int8);
    assert_eq!(p.activations, vec!["r"]);
    assert_eq!(
        ops(&q),
        [
            "Relu",
            "QuantizeLinear",
            "DequantizeLinear",
            "DequantizeLinear",
            "MatMul"
        ]
    );
    let mm = &graph(&q).node[4];
    assert_eq!(
        mm.input,
        ["r_DequantizeLinear_Output", "W_DequantizeLinear_Output"]
    );
    assert_eq!(mm.output, ["y"]);
    let wdq = &graph(&q).node[3];
    assert_eq!(wdq.attribute[0].name, "axis");
    assert_eq!(wdq.attribute[0].i, 1);
    assert_eq!(init(&q, "W_scale").dims, [3]);
    assert_eq!(init(&q, "W_quantized").data_type, INT8);
    assert_eq!(init(&q, "r_zero_point").raw_data, [(-128i8) as u8]);
    // The fp32 weight is gone.
    assert!(graph(&q).initializer.iter().all(|t| t.name != "W"));
    assert_eq!(p.weights["W"].bits, 8);
}

#[test]
fn w8_quantises_weights_only() {
    let (q, p) = rewrite(Scheme::W8);
    assert!(p.activations.is_empty());
    assert_eq!(ops(&q), ["Relu", "DequantizeLinear", "MatMul"]);
}

#[test]
fn dynamic_is_matmulinteger_with_the_node_name_kept() {
    let (q, _) = rewrite(Scheme::Int8Dynamic);
    assert_eq!(
        ops(&q),
        [
            "Relu",
            "DynamicQuantizeLinear",
            "MatMulInteger",
            "Cast",
            "Mul",
            "Mul"
        ]
    );
    let last = graph(&q).node.last().unwrap();
    assert_eq!((last.name.as_str(), last.output[0].as_str()), ("mm", "y"));
    assert_eq!(init(&q, "W_zero_point").dims, [3]);
}

#[test]
fn w4_is_matmulnbits() {
    // `mm` writes the graph output: 4 bits only when the head is asked for
    // 4 bits.
    let o = Options {
        head_bits: 4,
        ..opts(Scheme::W4 { group: 16 })
    };
    let (q, p) = rewrite_with(o, None);
    assert_eq!(ops(&q), ["Relu", "MatMulNBits"]);
    let m = &graph(&q).node[1];
    assert_eq!(m.domain, "com.microsoft");
    let attrs: Vec<(&str, i64)> = m.attribute.iter().map(|a| (a.name.as_str(), a.i)).collect();
    assert_eq!(attrs, [("K", 4), ("N", 3), ("bits", 4), ("block_size", 16)]);
    assert_eq!(init(&q, "W_Q4").dims, [3, 1, 8]);
    assert_eq!(init(&q, "W_scales").dims, [3]);
    assert_eq!(init(&q, "W_zero_points").dims, [3]);
    assert!(q.opset_import.iter().any(|o| o.domain == "com.microsoft"));
    assert_eq!(p.weights["W"].block_size, Some(16));
}

/// `--accuracy-level 4` is written as MatMulNBits' attribute (and 0 is
/// left unset, as above).
#[test]
fn w4_accuracy_level_is_an_attribute() {
    let o = Options {
        head_bits: 4,
        accuracy_level: 4,
        ..opts(Scheme::W4 { group: 16 })
    };
    let (q, _) = rewrite_with(o, None);
    let m = &graph(&q).node[1];
    let level = m.attribute.iter().find(|a| a.name == "accuracy_level");
    assert_eq!(level.map(|a| a.i), Some(4));
}

/// The MatMul writing a graph output (an LLM's lm_head) gets 8-bit
/// blocks by default; a layer override chooses either width.
#[test]
fn a_w4_head_is_8_bit_unless_overridden() {
    let w4 = opts(Scheme::W4 { group: 16 });
    let bits = |q: &ModelProto| {
        let m = &graph(q).node[1];
        m.attribute.iter().find(|a| a.name == "bits").unwrap().i
    };
    let (q, p) = rewrite_with(w4.clone(), None);
    assert_eq!(bits(&q), 8);
    assert_eq!(p.weights["W"].bits, 8);
    // One byte per code, one zero point byte per block, K padded to 16.
    assert_eq!(init(&q, "W_Q8").dims, [3, 1, 16]);
    assert_eq!(init(&q, "W_zero_points").dims, [3]);
    let (q, _) = rewrite_with(w4.clone(), Some(4));
    assert_eq!(bits(&q), 4);
    let o = Options { head_bits: 4, ..w4 };
    let (q, _) = rewrite_with(o, Some(8));
    assert_eq!(bits(&q), 8);
}

#[test]
fn excludes_by_name_or_type_and_unknown_ones_fail() {
    let m = matmul_model();
    for e in ["mm", "MatMul"] {
        let ex = resolve_excludes(&m.proto, &[e.to_string()]).unwrap();
        assert!(plan(&m.proto, Scheme::Int8, &ex, None)
            .unwrap()
            .layers
            .is_empty());
    }
    let err = resolve_excludes(&m.proto, &["Conv".into()]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "--exclude Conv: no node or operator of that name in the model"
    );
}

#[test]
fn per_channel_needs_opset_13() {
    let mut m = matmul_model();
    m.proto.opset_import[0].version = 11;
    let o = opts(Scheme::W8);
    let mut p = plan(&m.proto, Scheme::W8, &HashSet::new(), None).unwrap();
    let enc = Encodings::new(&m, &o);
    let e = quantize_graph(&m, &mut p, &o, &enc).unwrap_err();
    assert!(e.to_string().contains("opset 11: per-channel"), "{e}");
    let o = Options {
        per_channel: false,
        ..o
    };
    assert!(quantize_graph(&m, &mut p, &o, &enc).is_ok());
}

#[test]
fn a_layer_override_sets_per_tensor_weights() {
    let m = matmul_model();
    let o = opts(Scheme::W8);
    let mut p = plan(&m.proto, Scheme::W8, &HashSet::new(), None).unwrap();
    let mut enc = Encodings::new(&m, &o);
    enc.layers.insert(
        "mm".into(),
        crate::quantize::encodings::LayerOverride {
            quantize: true,
            per_channel: Some(false),
            bits: None,
        },
    );
    let q = quantize_graph(&m, &mut p, &o, &enc).unwrap();
    assert!(graph(&q).node[1].attribute.is_empty());
    assert_eq!(init(&q, "W_scale").dims, Vec::<i64>::new());
    assert_eq!(p.weights["W"].axis, None);
}
