#!/usr/bin/env bash
# A short cargo-fuzz run of the bundle reader targets (runtime/fuzz), seeded
# with a real firmware bundle. Needs cargo-fuzz and a nightly toolchain; CI
# (stable only) relies on the proptest in runtime/tests/bundle_bad_input.rs.
#
#   scripts/fuzz_smoke.sh [SECONDS_PER_TARGET]   (default 30)
set -euo pipefail

seconds="${1:-30}"
root="$(cd "$(dirname "$0")/.." && pwd)"
fuzz_dir="$root/runtime/fuzz"

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz_smoke: no nightly toolchain; skipped" >&2
    exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz_smoke: cargo-fuzz not installed (cargo install cargo-fuzz); skipped" >&2
    exit 0
fi

# Seeds: a small firmware for the raw reader; for the sealed target, its
# manifest JSON, a 0 byte and its body (the target's input format).
corpus="$fuzz_dir/corpus"
mkdir -p "$corpus/bundle_reader" "$corpus/bundle_sealed"
seed="$corpus/bundle_reader/imu.fw"
if [ ! -f "$seed" ]; then
    (cd "$root" && cargo run --quiet --bin m4c -- firmware build \
        --module imu_enc=tests/fixtures/imu_encoder.onnx -o "$seed")
fi
python3 - "$seed" "$corpus/bundle_sealed/imu.seed" <<'PY'
import json, struct, sys
data = open(sys.argv[1], "rb").read()
n = struct.unpack_from("<Q", data, 16)[0]
manifest = data[64:64 + n]
start = min(s["offset"] for s in json.loads(manifest)["sections"])
open(sys.argv[2], "wb").write(manifest + b"\0" + data[start:])
PY

cd "$fuzz_dir"
for target in bundle_reader bundle_sealed; do
    echo "fuzz_smoke: $target for ${seconds}s"
    cargo +nightly fuzz run "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -max_len=1048576
done
echo "fuzz_smoke: no crash"
