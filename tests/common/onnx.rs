//! Small ONNX models written by hand for the tests that need a model no
//! exporter makes (an unknown op, a bad attribute): one f32 input `x` and
//! one output `y`, both of shape [4].

use std::path::Path;

use m4c_compiler::onnx::pb;
use prost::Message;

/// Writes a model of opset `opset` whose graph is `nodes`, from `x` to `y`.
pub fn write_model(path: &Path, opset: i64, nodes: Vec<pb::NodeProto>) {
    let vi = |name: &str| pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: 1,
                shape: Some(pb::TensorShapeProto {
                    dim: vec![pb::tensor_shape_proto::Dimension {
                        value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(4)),
                        ..Default::default()
                    }],
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let model = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: opset,
        }],
        graph: Some(pb::GraphProto {
            name: "g".into(),
            node: nodes,
            input: vec![vi("x")],
            output: vec![vi("y")],
            ..Default::default()
        }),
        ..Default::default()
    };
    std::fs::write(path, model.encode_to_vec()).unwrap();
}

/// A node `op` (of `domain`, "" for ONNX) named `name` from `input` to
/// `output`.
pub fn node(op: &str, domain: &str, name: &str, input: &str, output: &str) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        domain: domain.into(),
        name: name.into(),
        input: vec![input.into()],
        output: vec![output.into()],
        ..Default::default()
    }
}
