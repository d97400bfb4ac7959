#!/usr/bin/env bash
# Installs what building and testing Triad needs on a fresh Debian machine: clang and libclang
# for RocksDB's bindings; for the tests also psql and pgbench, which the SQL front end's tests
# drive as real clients, and psycopg for the driver test. Safe to run again; does nothing when
# they are present.
#
#   scripts/setup.sh           everything the tests need (scripts/test.sh runs this)
#   scripts/setup.sh --build   only what building needs (scripts/dev.sh runs this)
set -euo pipefail
case "${1-}" in
    "") tests=1 ;;
    --build) tests=0 ;;
    *) echo "usage: $0 [--build]" >&2; exit 2 ;;
esac
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
missing=()
if ! ldconfig -p 2>/dev/null | grep -q 'libclang' || ! command -v clang >/dev/null; then
    missing+=(clang libclang-dev)
fi
if [ "$tests" = 1 ]; then
    command -v psql >/dev/null || missing+=(postgresql-client)
    # Debian's pgbench wrapper exists with the client alone; the program comes with the server.
    pgbench --version >/dev/null 2>&1 || missing+=(postgresql)
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]} (RocksDB's bindings; SQL client tests)…" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
[ "$tests" = 1 ] || exit 0
# psycopg (the most used Python driver) for the SQL front end's driver test, in the repository's
# venv (shared with flatc; git-ignored). Pinned so every machine tests the same driver.
PSYCOPG="psycopg[binary]==3.3.9"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if ! "$root/.venv/bin/python" -c 'import psycopg, sys; sys.exit(psycopg.__version__ != "3.3.9")' 2>/dev/null; then
    echo "setup: installing $PSYCOPG into $root/.venv (SQL driver test)…" >&2
    [ -x "$root/.venv/bin/pip" ] || python3 -m venv "$root/.venv"
    "$root/.venv/bin/pip" install --quiet --disable-pip-version-check "$PSYCOPG"
fi
