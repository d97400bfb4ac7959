#!/usr/bin/env bash
# Builds Triad (installing what the build needs) and runs `triad dev` with the given flags:
#   scripts/dev.sh            a local cluster on loopback, serving until Ctrl-C
#   scripts/dev.sh --demo     the same, plus the bank-transfer demo, verified, then exit
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --build
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
echo "dev: building (the first build compiles RocksDB: 15 to 35 minutes on 2 cores)…" >&2
# The whole workspace, as the test command builds it: the same features for every dependency,
# so RocksDB's C++ is compiled once for both commands.
cargo build --release --workspace
exec "$CARGO_TARGET_DIR/release/triad" dev "$@"
