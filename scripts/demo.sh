#!/usr/bin/env bash
# The demo: a local JetStream nats-server, two billing workers in one consumer group, a
# broadcast dashboard, and an order service publishing 10 orders. Shows the events flowing,
# then stops everything. Installs the pinned nats-server if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

NATS=$(scripts/ensure-nats-server.sh)
echo "demo: building the example services..."
cargo build -q -p bus-sdk --examples
bin="$(scripts/target-dir.sh)/debug/examples"

dir=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port); mon=$(free_port)
"$NATS" -js -sd "$dir/js" -a 127.0.0.1 -p "$port" -m "$mon" -l "$dir/nats.log" &
pids+=($!)

# Poll readiness (no fixed sleep), 20 s at most.
wait_for() { # what, deadline-seconds, command...
  local what=$1 limit=$2; shift 2
  local end=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS > end)); then echo "demo: timed out waiting for $what" >&2; exit 1; fi
    sleep 0.1
  done
}
wait_for "nats-server" 20 curl -fsS "http://127.0.0.1:$mon/healthz?js-enabled-only=true"
export NATS_URL="nats://127.0.0.1:$port"
echo "demo: nats-server with JetStream on $NATS_URL (store $dir/js)"

"$bin/broadcast_listener" >"$dir/dashboard.out" 2>"$dir/dashboard.err" &
pids+=($!)
for w in 1 2; do
  "$bin/billing_worker" >"$dir/billing$w.out" 2>"$dir/billing$w.err" &
  pids+=($!)
done
for f in dashboard billing1 billing2; do
  wait_for "$f" 30 grep -q ready "$dir/$f.out"
done

RUST_LOG=warn "$bin/order_service" 10
billed() { [ "$(grep -c '^dashboard: order .* billed' "$dir/dashboard.out")" -ge 10 ]; }
wait_for "10 orders billed" 30 billed

for f in billing1 billing2 dashboard; do
  echo; echo "--- $f"; grep -v ready "$dir/$f.out"
done
echo
echo "demo: 10 orders published, shared by the two billing workers, seen by the dashboard."
