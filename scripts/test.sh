#!/usr/bin/env bash
# Runs every test of the workspace. Installs what the tests need when it is missing:
# Debian's qemu-user (the emulated CPU model tests run programs under qemu-x86_64 -cpu MODEL).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v qemu-x86_64 >/dev/null 2>&1; then
    echo "scripts/test.sh: installing qemu-user (for qemu-x86_64 -cpu MODEL tests)"
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq qemu-user >/dev/null
fi

cargo test --workspace --locked
