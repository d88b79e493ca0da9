#!/usr/bin/env bash
# The benchmark command (BENCHMARKS.md): the bus against raw async-nats on nats-server
# processes that bus-bench starts itself on 127.0.0.1. Ensures the pinned nats-server,
# builds bus-bench with the release profile, prints the machine as markdown, then runs it;
# every argument goes to bus-bench:
#
#   scripts/bench.sh                      # R1 (one node), every workload, 3 rounds
#   scripts/bench.sh --cluster 3          # R3 (three-node cluster)
#   scripts/bench.sh --quick              # smoke run, about a minute
#   scripts/bench.sh --workloads e2e --rounds 5 --out /tmp/e2e.md
#   scripts/bench.sh --workloads push     # SSE fan-out to 1,000 clients, bus-node vs bare
#   scripts/bench.sh --help
#
# The table goes to stdout, progress to stderr. Run nothing else heavy meanwhile: the
# client and the servers share the box's cores.
set -euo pipefail
cd "$(dirname "$0")/.."

NATS_SERVER_BIN=$(scripts/ensure-nats-server.sh)
export NATS_SERVER_BIN

# bus-node too: the webhook and push workloads run it as a process.
cargo build --release -p bus-bench -p bus-node >&2
bin="$(scripts/target-dir.sh)/release/bus-bench"

for arg in "$@"; do
  case "$arg" in
    -h|--help|-V|--version) exec "$bin" "$@" ;;
  esac
done

commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git status --porcelain -- bus-core bus-sdk bus-node tests 2>/dev/null)" ]; then
  commit="$commit + uncommitted changes"
fi
cat <<MD
### $(date -u +%Y-%m-%d) · bus-bench $*

| machine | |
|---|---|
| cores (nproc) | $(nproc) |
| CPU | $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//') |
| memory | $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) |
| nats-server | $("$NATS_SERVER_BIN" --version 2>&1 | awk '{ print $NF }') |
| rustc | $(rustc --version | cut -d' ' -f2-) |
| commit | $commit |

MD
exec "$bin" "$@"
