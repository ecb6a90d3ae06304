#!/usr/bin/env bash
# The test command (README and CI): formatting, lints, every test of the
# workspace in the dev profile, then a short fuzz smoke run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# setup.sh installed a Vulkan driver (Mesa's lavapipe where there is no
# GPU): the GPU engine's tests must run, not skip.
export M4C_REQUIRE_GPU=1
# setup.sh installed ptxas into .venv-ptxas: the PTX assembly test must run.
export M4C_REQUIRE_PTXAS=1
# setup.sh installed qemu-user and the aarch64 cross gcc: the conformance
# suite's `cpu-aarch64` engine (NEON code under emulation) must run.
export M4C_REQUIRE_QEMU=1
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace
# Ten seconds of coverage-guided fuzzing of every loader (installs
# cargo-fuzz when missing; a target that cannot build or run fails).
scripts/fuzz_smoke.sh 10
