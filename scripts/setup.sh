#!/usr/bin/env bash
# Installs what building m4c needs and is missing: LLVM 19 (the CPU and GPU
# backends link it dynamically). Safe to run repeatedly.
set -euo pipefail
if ! command -v llvm-config-19 >/dev/null 2>&1 && [ ! -x /usr/lib/llvm-19/bin/llvm-config ]; then
    echo "setup: installing llvm-19-dev" >&2
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq llvm-19-dev >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: cargo (Rust ≥ 1.91) is required" >&2; exit 1; }
