#!/usr/bin/env bash
# A short coverage-guided fuzz run of every loader of hostile input
# (fuzz/: bundles, sealed bundles, ONNX load + lowering + interpreter, npz,
# PEFT adapters, task manifests, IR text, NPU programs, CPU code plans), each seeded with
# real inputs from the repository.
#
#   scripts/fuzz_smoke.sh [SECONDS_PER_TARGET]   (default 30)
#
# Installs cargo-fuzz when missing. Uses a nightly toolchain when there is
# one, else the stable toolchain with RUSTC_BOOTSTRAP=1 (which carries the
# sanitizer runtimes cargo-fuzz needs). Anything that keeps a target from
# running fails the script: a fuzz run that cannot start is not a pass.
# Crashes are left in fuzz/artifacts/TARGET/ for a regression test.
set -euo pipefail

seconds="${1:-30}"
root="$(cd "$(dirname "$0")/.." && pwd)"
fuzz_dir="$root/fuzz"
targets=(bundle_reader bundle_sealed onnx_lower npz peft_adapter task_manifest ir_text npu_program cpu_plan)

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz_smoke: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked --quiet
fi
toolchain=()
if cargo +nightly --version >/dev/null 2>&1; then
    toolchain=(+nightly)
else
    export RUSTC_BOOTSTRAP=1
fi

# Seeds.
corpus="$fuzz_dir/corpus"
for t in "${targets[@]}"; do mkdir -p "$corpus/$t"; done
m4c=(cargo run --quiet --manifest-path "$root/Cargo.toml" --bin m4c --)
fw="$corpus/bundle_reader/imu.fw"
[ -f "$fw" ] || "${m4c[@]}" firmware build --module imu_enc="$root/tests/fixtures/imu_encoder.onnx" -o "$fw" >/dev/null
# The sealed target reads the manifest JSON, a 0 byte and the body.
python3 - "$fw" "$corpus/bundle_sealed/imu.seed" <<'PY'
import json, struct, sys
data = open(sys.argv[1], "rb").read()
n = struct.unpack_from("<Q", data, 16)[0]
manifest = data[64:64 + n]
start = min(s["offset"] for s in json.loads(manifest)["sections"])
open(sys.argv[2], "wb").write(manifest + b"\0" + data[start:])
PY
for m in imu_encoder resnet_small if_constant_condition gru_classifier; do
    cp -f "$root/tests/fixtures/$m.onnx" "$corpus/onnx_lower/"
    cp -f "$root/tests/fixtures/$m.inputs.npz" "$corpus/npz/$m.npz"
done
# Quantised imports: MatMulNBits with int8 compute (its activation chain).
cp -f "$root/tests/fixtures/quant/llama_prefill_int4_a8.onnx" "$corpus/onnx_lower/"
# A sample of ONNX's node-test models: one op each, every attribute form.
find "$root/tests/onnx-node" -name model.onnx -size -4k | sort | awk 'NR % 8 == 1' |
    while read -r f; do cp -f "$f" "$corpus/onnx_lower/$(basename "$(dirname "$f")").onnx"; done
peft="$root/tests/fixtures/llama_lora_adapter"
{ cat "$peft/adapter_config.json"; printf '\0'; cat "$peft/adapter_model.safetensors"; } \
    >"$corpus/peft_adapter/llama_lora.seed"
cp -f "$root/examples/m4_tasks/tasks.toml" "$corpus/task_manifest/"
cp -f "$root"/tests/filetests/*.ir "$corpus/ir_text/"
[ -f "$corpus/npu_program/gemm.npub" ] ||
    "${m4c[@]}" npu gemm --m 8 --k 16 --n 8 --emit "$corpus/npu_program/gemm.npub" >/dev/null
# The CPU code plan of the IMU encoder (what cpu_plan checks against).
if [ ! -f "$corpus/cpu_plan/imu.plan.json" ]; then
    scratch="$(mktemp -d)"
    "${m4c[@]}" compile --backend cpu --target x86_64-avx512 --cpu x86-64-v4 \
        "$root/tests/fixtures/imu_encoder.onnx" -o "$scratch/imu" >/dev/null
    cp "$scratch/imu/plan.json" "$corpus/cpu_plan/imu.plan.json"
    rm -rf "$scratch"
fi

cd "$fuzz_dir"
for t in "${targets[@]}"; do
    echo "fuzz_smoke: $t for ${seconds}s"
    log="$fuzz_dir/target/fuzz_smoke_$t.log"
    mkdir -p "$fuzz_dir/target"
    # `cargo fuzz run` exits non-zero on a crash, a timeout (an input
    # running over 10 s), an out-of-memory or a failed build.
    if ! cargo "${toolchain[@]}" fuzz run "$t" "corpus/$t" -- \
        -max_total_time="$seconds" -max_len=1048576 -timeout=10 -rss_limit_mb=4096 \
        -print_final_stats=1 >"$log" 2>&1; then
        tail -40 "$log" >&2
        echo "fuzz_smoke: $t failed; see $log and fuzz/artifacts/$t/" >&2
        exit 1
    fi
    grep -E "^stat::(number_of_executed_units|peak_rss_mb)|^Done" "$log" | sed "s/^/  $t: /"
done
echo "fuzz_smoke: ${#targets[@]} targets, no crash"
