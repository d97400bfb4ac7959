# Shared by docker/up, docker/down and docker/chaos (sourced, not run). Settings come from the
# environment so that a test can run its own cluster next to a developer's:
#   TRIAD_PROJECT      compose project name                    (default triad)
#   TRIAD_NET          first three octets of the cluster /24   (default 172.28.57)
#   TRIAD_STATE_DIR    TLS material and the SQL password       (default docker/.state/$TRIAD_PROJECT)
#   TRIAD_IMAGE        image tag                               (default triad:local)
#   TRIAD_SQL_PUBLISH  host side of the SQL port               (default 127.0.0.1:5433)
#   TRIAD_BIN          the triad binary on the host            (default $CARGO_TARGET_DIR/release/triad)

docker_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_dir="$(cd "$docker_dir/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo_dir/target}"
export TRIAD_PROJECT="${TRIAD_PROJECT:-triad}"
export TRIAD_NET="${TRIAD_NET:-172.28.57}"
export TRIAD_STATE_DIR="${TRIAD_STATE_DIR:-$docker_dir/.state/$TRIAD_PROJECT}"
export TRIAD_IMAGE="${TRIAD_IMAGE:-triad:local}"
export TRIAD_SQL_PUBLISH="${TRIAD_SQL_PUBLISH:-127.0.0.1:5433}"
export TRIAD_BIN="${TRIAD_BIN:-$CARGO_TARGET_DIR/release/triad}"

# The compose v2 plugin if present, else Debian's docker-compose (v1); both read compose.yml.
compose() {
    if docker compose version >/dev/null 2>&1; then
        docker compose -p "$TRIAD_PROJECT" -f "$docker_dir/compose.yml" "$@"
    elif command -v docker-compose >/dev/null; then
        docker-compose -p "$TRIAD_PROJECT" -f "$docker_dir/compose.yml" "$@"
    else
        echo "neither 'docker compose' nor 'docker-compose' is installed" >&2
        return 1
    fi
}

# Every member's address, as the triad CLI takes them.
journal_addrs="$TRIAD_NET.11:7101,$TRIAD_NET.12:7101,$TRIAD_NET.13:7101"
sequencer_addrs="$TRIAD_NET.21:7110,$TRIAD_NET.22:7110"
replayer_addrs="$TRIAD_NET.31:7120,$TRIAD_NET.32:7120"
