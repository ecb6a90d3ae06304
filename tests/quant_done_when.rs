//! Issue 10's "Done when", command for command, on every M4 fixture of
//! `tests/fixtures` (both exporters) and the KV-cache decoders:
//!
//! ```sh
//! m4c quantize X.onnx --calibrate X.inputs.npz --scheme int8 -o q.onnx
//! m4c run q.onnx --inputs X.inputs.npz --expect X.expected.npz --min-cosine 0.98
//! ```
//!
//! run on the reference interpreter and on compiled CPU code
//! (`--backend cpu`), and `--scheme w4` at 0.97 for the LLaMA-style
//! decoders (prefill, decode, LoRA-merged, `decoder_past*`). The
//! expectations are onnxruntime's fp32 outputs of the unquantised model.

mod common;
use common::{fixture, m4c, text};
use std::path::Path;

/// Quantises fixture `name` with `scheme`, calibrated on its own input,
/// and checks the result against the fp32 expectations at `min_cosine` on
/// both backends.
fn done_when(name: &str, scheme: &str, min_cosine: &str) {
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("q.onnx");
    let model = fixture(&format!("{name}.onnx"));
    let inputs = fixture(&format!("{name}.inputs.npz"));
    let expect = fixture(&format!("{name}.expected.npz"));
    let p = Path::new;
    let o = m4c(&[
        p("quantize"),
        &model,
        p("--calibrate"),
        &inputs,
        p("--scheme"),
        p(scheme),
        p("-o"),
        &q,
    ]);
    assert_eq!(o.status.code(), Some(0), "{name} {scheme}: {}", text(&o));
    for backend in ["reference", "cpu"] {
        let o = m4c(&[
            p("run"),
            &q,
            p("--backend"),
            p(backend),
            p("--inputs"),
            &inputs,
            p("--expect"),
            &expect,
            p("--min-cosine"),
            p(min_cosine),
        ]);
        let out = text(&o);
        assert_eq!(o.status.code(), Some(0), "{name} {scheme} {backend}: {out}");
        // One judged line per output, each within the bound.
        let judged = out.lines().filter(|l| l.ends_with(" ok")).count();
        assert!(judged >= 1, "{name} {scheme} {backend}: {out}");
        assert!(!out.contains("FAIL"), "{name} {scheme} {backend}: {out}");
    }
}

macro_rules! done_when_tests {
    ($($test:ident: $name:literal, $scheme:literal, $bound:literal;)*) => {$(
        #[test]
        fn $test() {
            done_when($name, $scheme, $bound);
        }
    )*};
}

done_when_tests! {
    clip_vision_int8: "clip_vision", "int8", "0.98";
    clip_vision_dynamo_int8: "clip_vision_dynamo", "int8", "0.98";
    clip_text_int8: "clip_text", "int8", "0.98";
    clip_text_dynamo_int8: "clip_text_dynamo", "int8", "0.98";
    imu_encoder_int8: "imu_encoder", "int8", "0.98";
    imu_encoder_dynamo_int8: "imu_encoder_dynamo", "int8", "0.98";
    whisper_encoder_int8: "whisper_encoder", "int8", "0.98";
    whisper_encoder_dynamo_int8: "whisper_encoder_dynamo", "int8", "0.98";
    llama_prefill_int8: "llama_prefill", "int8", "0.98";
    llama_prefill_dynamo_int8: "llama_prefill_dynamo", "int8", "0.98";
    llama_decode_int8: "llama_decode", "int8", "0.98";
    llama_decode_dynamo_int8: "llama_decode_dynamo", "int8", "0.98";
    llama_lora_int8: "llama_lora", "int8", "0.98";
    llama_lora_dynamo_int8: "llama_lora_dynamo", "int8", "0.98";
    decoder_past_int8: "decoder_past", "int8", "0.98";
    decoder_past_bare_int8: "decoder_past_bare", "int8", "0.98";
    decoder_past_lora_int8: "decoder_past_lora", "int8", "0.98";
    llama_prefill_w4: "llama_prefill", "w4", "0.97";
    llama_prefill_dynamo_w4: "llama_prefill_dynamo", "w4", "0.97";
    llama_decode_w4: "llama_decode", "w4", "0.97";
    llama_decode_dynamo_w4: "llama_decode_dynamo", "w4", "0.97";
    llama_lora_w4: "llama_lora", "w4", "0.97";
    llama_lora_dynamo_w4: "llama_lora_dynamo", "w4", "0.97";
    decoder_past_w4: "decoder_past", "w4", "0.97";
    decoder_past_bare_w4: "decoder_past_bare", "w4", "0.97";
    decoder_past_lora_w4: "decoder_past_lora", "w4", "0.97";
}
