#!/usr/bin/env bash
# Installs what building and testing m4c needs and is missing: LLVM 19 (the
# CPU backend links it dynamically), a Vulkan driver for the GPU backend's
# tests (Mesa's lavapipe, a software Vulkan device: no GPU needed) and ptxas
# for its PTX tests, and the aarch64 cross C compiler and qemu-user, which
# run the CPU backend's NEON code in the conformance suite. Safe to run
# repeatedly.
set -euo pipefail
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
updated=""
install() {
    echo "setup: installing $*" >&2
    if [ -z "$updated" ]; then
        $SUDO apt-get update -qq
        updated=1
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}
if ! command -v llvm-config-19 >/dev/null 2>&1 && [ ! -x /usr/lib/llvm-19/bin/llvm-config ]; then
    install llvm-19-dev
fi
# The GPU backend's conformance suite runs on lavapipe when no GPU is present.
if ! ls /usr/share/vulkan/icd.d/lvp_icd.*.json >/dev/null 2>&1; then
    install mesa-vulkan-drivers
fi
# The CPU backend's aarch64 code runs under qemu-user in the conformance
# suite (tests/conformance/qemu.rs), linked by the cross gcc.
if ! command -v qemu-aarch64 >/dev/null 2>&1 || ! command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 ||
    [ ! -f /usr/aarch64-linux-gnu/lib/libc.a ]; then
    install qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross
fi
# NVIDIA's PTX assembler, for the test that every fixture's PTX (`m4c compile
# --backend gpu:cuda`) assembles for sm_90 (tests/gpu_ptx.rs). Proprietary:
# installed from PyPI into a git-ignored venv, never committed.
root="$(cd "$(dirname "$0")/.." && pwd)"
if ! ls "$root"/.venv-ptxas/lib/python3*/site-packages/nvidia/cuda_nvcc/bin/ptxas >/dev/null 2>&1; then
    echo "setup: installing ptxas (nvidia-cuda-nvcc-cu12) into .venv-ptxas" >&2
    if ! python3 -m venv "$root/.venv-ptxas" >/dev/null 2>&1; then
        install python3-venv
        python3 -m venv "$root/.venv-ptxas"
    fi
    "$root/.venv-ptxas/bin/pip" install -q "nvidia-cuda-nvcc-cu12==12.9.86"
fi
command -v cargo >/dev/null || { echo "setup: cargo (Rust ≥ 1.91) is required" >&2; exit 1; }
