#!/usr/bin/env bash
# Installs what building Triad needs on a fresh Debian machine: clang and libclang for
# RocksDB's bindings. Safe to run again; does nothing when they are present.
set -euo pipefail
if ! ldconfig -p 2>/dev/null | grep -q 'libclang' || ! command -v clang >/dev/null; then
    echo "setup: installing clang and libclang-dev (needed by RocksDB's bindings)…" >&2
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq clang libclang-dev >/dev/null
fi
