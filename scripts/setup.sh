#!/usr/bin/env bash
# Installs what building and testing m4c needs and is missing: LLVM 19 (the
# CPU backend links it dynamically) and a Vulkan driver for the GPU backend's
# tests (Mesa's lavapipe, a software Vulkan device: no GPU needed). Safe to
# run repeatedly.
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
command -v cargo >/dev/null || { echo "setup: cargo (Rust ≥ 1.91) is required" >&2; exit 1; }
