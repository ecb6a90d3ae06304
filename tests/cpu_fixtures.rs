//! Every committed fixture compiled by the CPU backend for this host and
//! compared with onnxruntime's outputs (`X.expected.npz`), with the
//! tolerance `m4c run --expect` uses (rtol 1e-4, atol 1e-5).

use std::collections::HashSet;
use std::path::Path;

use m4c_compiler::{lower, LowerOptions, OnnxModel};
use m4c_cpu_codegen::{compile_graph, CompileOptions, Target};
use m4c_ops::{compare, Comparison, Value};
use m4c_runtime::{read_npz, sanitized_key};

const RTOL: f64 = 1e-4;
const ATOL: f64 = 1e-5;

/// Compiles and runs one fixture; returns each output's name and its
/// comparison with onnxruntime's.
fn check(name: &str) -> Vec<(String, Comparison)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let model = OnnxModel::load(&dir.join(format!("{name}.onnx"))).unwrap();
    let inputs = read_npz(&dir.join(format!("{name}.inputs.npz"))).unwrap();
    let expected = read_npz(&dir.join(format!("{name}.expected.npz"))).unwrap();
    let proto = model.graph();
    let inits: HashSet<&str> = proto.initializer.iter().map(|t| t.name.as_str()).collect();
    let mut opts = LowerOptions::default();
    let mut feeds = Vec::new();
    for input in proto
        .input
        .iter()
        .filter(|i| !inits.contains(i.name.as_str()))
    {
        let v = inputs
            .get(&input.name)
            .or_else(|| inputs.get(&sanitized_key(&input.name)))
            .unwrap_or_else(|| panic!("{name}: no input {}", input.name));
        opts.input_shapes
            .insert(input.name.clone(), v.shape().to_vec());
        feeds.push(v.to_tensor());
    }
    let graph = lower(&model, &opts).unwrap();
    let options = CompileOptions {
        target: Target::parse(None, None).unwrap(),
        threads: 2,
    };
    let mut compiled = compile_graph(&graph, &options).unwrap_or_else(|e| panic!("{name}: {e}"));
    let outputs = compiled
        .run(&feeds)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    proto
        .output
        .iter()
        .zip(outputs)
        .map(|(o, got)| {
            let want = expected
                .get(&o.name)
                .or_else(|| expected.get(&sanitized_key(&o.name)))
                .unwrap_or_else(|| panic!("{name}: no reference for {}", o.name));
            let got = Value::from_tensor(&got).unwrap();
            assert_eq!(got.shape(), want.shape(), "{name}/{}", o.name);
            (o.name.clone(), compare(&got, want, RTOL, ATOL))
        })
        .collect()
}

macro_rules! fixtures {
    ($($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            for (output, c) in check(stringify!($name)) {
                eprintln!("{} {output}: {}", stringify!($name), c.summary());
                assert!(c.passed(), "{}/{output}: {}", stringify!($name), c.summary());
            }
        }
    )*};
}

fixtures!(
    batchnorm_net,
    clip_text,
    clip_text_dynamo,
    clip_vision,
    clip_vision_dynamo,
    deeplab_head,
    distilbert,
    gru_classifier,
    if_constant_condition,
    imu_encoder,
    imu_encoder_dynamo,
    llama_decode,
    llama_decode_dynamo,
    llama_lora,
    llama_lora_dynamo,
    llama_prefill,
    llama_prefill_dynamo,
    lstm_lm,
    mlp_external_data,
    mobilenet_v3_small,
    resnet_small,
    whisper_encoder,
    whisper_encoder_dynamo,
);
