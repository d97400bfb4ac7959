#!/usr/bin/env bash
# Everything CI checks, in one release profile so RocksDB's C++ is built once:
# generated-code drift, formatting, clippy, and every test (unit, property, multi-process).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
echo "== generated protocol code matches the schema" >&2
scripts/gen-protocol.sh --check
echo "== cargo fmt" >&2
cargo fmt --all --check
echo "== cargo clippy" >&2
cargo clippy --release --workspace --all-targets -- -D warnings
echo "== cargo test" >&2
cargo test --release --workspace
