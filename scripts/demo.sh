#!/usr/bin/env bash
# The main job on a shipped example: inspect an M4 backbone (a LLaMA decoder
# with LoRA branches), run it against onnxruntime's outputs through the
# reference interpreter and through compiled CPU code, then pack the base
# model as firmware with the LoRA as an app adapter and run that; then
# quantise an encoder, generate text with a KV cache (as onnxruntime's
# greedy loop does) and run a model on the GPU backend.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --quiet --bin m4c
m4c=target/debug/m4c
F=tests/fixtures
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

echo "== backends"
$m4c backends
echo "== inspect"
$m4c inspect $F/llama_lora.onnx
echo "== run (reference interpreter) vs onnxruntime"
$m4c run $F/llama_lora.onnx --inputs $F/llama_lora.inputs.npz --expect $F/llama_lora.expected.npz
echo "== run (compiled for this CPU) vs onnxruntime"
$m4c run $F/llama_lora.onnx --inputs $F/llama_lora.inputs.npz --expect $F/llama_lora.expected.npz --backend cpu
echo "== firmware (base model) + app adapter (PEFT LoRA) vs the exported LoRA model"
$m4c firmware build --module backbone=$F/llama_prefill.onnx --module img_enc=$F/clip_vision.onnx --backend cpu -o "$out/M4.fw"
$m4c adapt "$out/M4.fw" --module backbone --adapter $F/llama_lora_adapter -o "$out/app.m4a"
$m4c run "$out/M4.fw" --module backbone --adapter "$out/app.m4a" --inputs $F/llama_lora.inputs.npz --expect $F/llama_lora.expected.npz
echo "== signed firmware: native code runs only from a bundle signed by a trusted key"
$m4c keygen -o "$out/dev.key"
$m4c firmware build --module img_enc=$F/clip_vision.onnx --backend cpu --sign-key "$out/dev.key" -o "$out/signed.fw"
$m4c run "$out/signed.fw" --module img_enc --inputs $F/clip_vision.inputs.npz --expect $F/clip_vision.expected.npz \
    --trust-key "$out/dev.key.pub" --engine compiled
echo "== quantise an encoder to int8 (calibrated on its inputs) and check it against the fp32 reference"
$m4c quantize $F/clip_vision.onnx --calibrate $F/clip_vision.inputs.npz --scheme int8 --per-channel -o "$out/clip_vision.int8.onnx"
$m4c run "$out/clip_vision.int8.onnx" --inputs $F/clip_vision.inputs.npz --expect $F/clip_vision.expected.npz --min-cosine 0.98
echo "== generate: one prefill call, then KV-cache decode steps (onnxruntime's greedy loop gives 10 19 32 20 14 10 19 2)"
$m4c generate $F/decoder_past.onnx --prompt-ids 5,17,42,8,33,2 --max-new-tokens 8 --backend cpu
echo "== the GPU backend (WGSL through wgpu: Vulkan, or Mesa's lavapipe where there is no GPU)"
$m4c run $F/clip_vision.onnx --inputs $F/clip_vision.inputs.npz --expect $F/clip_vision.expected.npz --backend gpu
