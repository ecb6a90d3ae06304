#!/usr/bin/env bash
# The test command (README and CI): formatting, lints, every test of the
# workspace in the dev profile, then a short fuzz smoke run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace
# A few seconds of coverage-guided fuzzing of the bundle reader where a
# nightly toolchain and cargo-fuzz exist (skips itself otherwise; the
# proptest in runtime/tests/bundle_bad_input.rs is the stable-only check).
scripts/fuzz_smoke.sh 10
