#!/usr/bin/env bash
# Runs every test of the workspace. Installs what the tests need when it is missing:
# Debian's qemu-user (the emulated CPU model tests run programs under qemu-x86_64 -cpu MODEL and
# qemu-aarch64 -cpu MODEL), qemu-system-x86 (tests/kernel_qemu.rs boots the test kernel under
# qemu-system-x86_64), and gcc-aarch64-linux-gnu with binutils-aarch64-linux-gnu
# and libc6-dev-arm64-cross (tests/aarch64_qemu.rs and alt-runtime/tests/alt_h.rs build
# AArch64 programs from source).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
UPDATED=""
install() { # install PACKAGE WHY
    echo "scripts/test.sh: installing $1 ($2)"
    if [ -z "$UPDATED" ]; then $SUDO apt-get update -qq; UPDATED=1; fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$1" >/dev/null
}
need() { # need PACKAGE COMMAND WHY
    if command -v "$2" >/dev/null 2>&1; then return; fi
    install "$1" "$3"
}
need_file() { # need_file PACKAGE FILE WHY
    if [ -e "$2" ]; then return; fi
    install "$1" "$3"
}
need qemu-user qemu-x86_64 "for qemu-x86_64 -cpu MODEL tests"
need qemu-system-x86 qemu-system-x86_64 "to boot the test kernel in tests/kernel_qemu.rs"
need qemu-user qemu-aarch64 "for qemu-aarch64 -cpu MODEL tests"
need gcc-aarch64-linux-gnu aarch64-linux-gnu-gcc "to build the AArch64 test programs"
need binutils-aarch64-linux-gnu aarch64-linux-gnu-objdump "to disassemble patched AArch64 sites"
need_file libc6-dev-arm64-cross /usr/aarch64-linux-gnu/lib/libc.a "to link the AArch64 C example"

cargo test --workspace --locked
