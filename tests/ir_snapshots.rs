//! Lowered IR of small fixtures, as snapshots of the textual form, and the
//! promise that weights are referenced in the model file, not copied.

use std::path::Path;

use m4c_compiler::{lower, LowerOptions, OnnxModel};

fn lowered(name: &str) -> m4c_ir::Graph {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let model = OnnxModel::load(&path).unwrap();
    lower(
        &model,
        &LowerOptions {
            default_dim: Some(1),
            ..Default::default()
        },
    )
    .unwrap()
}

#[test]
fn batchnorm_folds_into_conv() {
    let g = lowered("batchnorm_net.onnx");
    let text = m4c_ir::text::print(&g);
    // Both BatchNormalizations after a Conv disappear into its weights and
    // bias: no Mul reads a Conv result.
    let convs: Vec<_> = g
        .nodes
        .iter()
        .filter(|n| n.op.name() == "Conv")
        .map(|n| n.output)
        .collect();
    assert_eq!(convs.len(), 2);
    assert!(g
        .nodes
        .iter()
        .all(|n| n.op.name() != "Mul" || !n.inputs.iter().any(|i| convs.contains(i))));
    insta::assert_snapshot!(text);
}

#[test]
fn resnet_small_ir() {
    insta::assert_snapshot!(m4c_ir::text::print(&lowered("resnet_small.onnx")));
}

#[test]
fn imu_encoder_ir() {
    insta::assert_snapshot!(m4c_ir::text::print(&lowered("imu_encoder.onnx")));
}

#[test]
fn lowered_text_parses_back() {
    for name in [
        "imu_encoder.onnx",
        "llama_lora.onnx",
        "clip_vision_dynamo.onnx",
    ] {
        let g = lowered(name);
        let text = m4c_ir::text::print(&g);
        let back = m4c_ir::text::parse(&text, &Default::default()).unwrap();
        assert_eq!(m4c_ir::text::print(&back), text, "{name}");
    }
}

#[test]
fn weights_stay_in_the_model_file() {
    for name in ["llama_prefill.onnx", "mlp_external_data.onnx"] {
        let g = lowered(name);
        let big: Vec<_> = g
            .constants()
            .map(|c| g.constant(c).unwrap())
            .filter(|t| t.len() > 256)
            .collect();
        assert!(!big.is_empty(), "{name}");
        let mapped = big.iter().filter(|t| t.is_mapped()).count();
        // Weights used as they are stay mapped; only compiler-made constants
        // (folded or transformed) are owned.
        assert!(
            mapped * 2 > big.len(),
            "{name}: {mapped} of {} large constants mapped",
            big.len()
        );
    }
}
