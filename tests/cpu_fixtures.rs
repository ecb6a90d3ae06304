//! Every committed fixture compiled by the CPU backend for this host and
//! compared with onnxruntime's outputs (`X.expected.npz`), with the
//! tolerance `m4c run --expect` uses (rtol 1e-4, atol 1e-5).

use std::collections::HashSet;
use std::path::Path;

use m4c_compiler::{lower, LowerOptions, OnnxModel};
use m4c_cpu_codegen::{compile_graph, CompileOptions, Target};
use m4c_ops::Value;
use m4c_runtime::{read_npz, sanitized_key};

const RTOL: f64 = 1e-4;
const ATOL: f64 = 1e-5;

/// Compiles and runs one fixture; returns (output name, max abs error,
/// elements out of tolerance) per output.
fn check(name: &str) -> Vec<(String, f64, usize)> {
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
            let (g, w) = (as_f64(&got), as_f64(want));
            let mut max_abs: f64 = 0.0;
            let mut bad = 0;
            for (a, b) in g.iter().zip(&w) {
                if a == b || (a.is_nan() && b.is_nan()) {
                    continue;
                }
                let d = (a - b).abs();
                max_abs = max_abs.max(d);
                if d.is_nan() || d > ATOL + RTOL * b.abs() {
                    bad += 1;
                }
            }
            (o.name.clone(), max_abs, bad)
        })
        .collect()
}

fn as_f64(v: &Value) -> Vec<f64> {
    match v {
        Value::F32(a) => a.iter().map(|&x| f64::from(x)).collect(),
        Value::I64(a) => a.iter().map(|&x| x as f64).collect(),
        Value::I32(a) => a.iter().map(|&x| f64::from(x)).collect(),
        Value::I8(a) => a.iter().map(|&x| f64::from(x)).collect(),
        Value::Bool(a) => a.iter().map(|&x| f64::from(u8::from(x))).collect(),
        Value::F16(a) => a.iter().map(|&x| f64::from(x)).collect(),
        Value::BF16(a) => a.iter().map(|&x| f64::from(x)).collect(),
    }
}

macro_rules! fixtures {
    ($($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            for (output, max_abs, bad) in check(stringify!($name)) {
                eprintln!("{} {output}: max abs error {max_abs:.3e}", stringify!($name));
                assert_eq!(bad, 0, "{}/{output}: {bad} elements out of tolerance (max abs {max_abs:.3e})", stringify!($name));
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
