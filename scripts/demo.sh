#!/usr/bin/env bash
# The main job on a shipped example: inspect an M4 backbone (a LLaMA decoder
# with LoRA branches), lower it onto the IR and run it against
# onnxruntime's outputs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --quiet
M=tests/fixtures/llama_lora
./target/release/m4c inspect $M.onnx
./target/release/m4c run $M.onnx --inputs $M.inputs.npz --expect $M.expected.npz
