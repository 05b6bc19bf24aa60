#!/usr/bin/env bash
# Runs every test of the workspace. Installs what the tests need when it is missing:
# Debian's qemu-user (the emulated CPU model tests run programs under qemu-x86_64 -cpu MODEL) and
# qemu-system-x86 (tests/kernel_qemu.rs boots the test kernel under qemu-system-x86_64).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
UPDATED=""
need() { # need PACKAGE COMMAND WHY
    if command -v "$2" >/dev/null 2>&1; then return; fi
    echo "scripts/test.sh: installing $1 ($3)"
    if [ -z "$UPDATED" ]; then $SUDO apt-get update -qq; UPDATED=1; fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$1" >/dev/null
}
need qemu-user qemu-x86_64 "for qemu-x86_64 -cpu MODEL tests"
need qemu-system-x86 qemu-system-x86_64 "to boot the test kernel in tests/kernel_qemu.rs"

cargo test --workspace --locked
