#!/usr/bin/env bash
# The test command (README and CI): formatting, lints, then every test of
# the workspace in the dev profile.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace
