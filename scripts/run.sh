#!/usr/bin/env bash
# Runs the bus: `bus-node dev` (a node on its own embedded JetStream nats-server), then
# posts sample events (three, then one every 3 s) so you see them flow, in the terminal
# and on the live page it prints the address of. Ctrl-C stops everything.
# Installs the pinned nats-server if it is missing. Set BUS__HTTP__LISTEN to move the port.
set -euo pipefail
cd "$(dirname "$0")/.."

NATS_SERVER_BIN=$(scripts/ensure-nats-server.sh)
export NATS_SERVER_BIN
cargo build -q -p bus-node
bin="$(scripts/target-dir.sh)/debug/bus-node"
listen=${BUS__HTTP__LISTEN:-127.0.0.1:8080}
export BUS__HTTP__LISTEN=$listen

"$bin" dev &
node=$!
trap 'kill -TERM $node 2>/dev/null || true; wait $node 2>/dev/null || true' EXIT INT TERM

# Poll readiness (no fixed sleep), 30 s at most.
end=$((SECONDS + 30))
until curl -fsS "http://$listen/readyz" >/dev/null 2>&1; do
  if ! kill -0 $node 2>/dev/null; then echo "run: bus-node exited" >&2; exit 1; fi
  if ((SECONDS > end)); then echo "run: bus-node not ready after 30 s" >&2; exit 1; fi
  sleep 0.1
done

for n in 1 2 3; do
  curl -fsS -X POST "http://$listen/v1/events" \
    -H 'content-type: application/cloudevents+json' \
    -d "{\"specversion\":\"1.0\",\"id\":\"sample-$n\",\"source\":\"/run.sh\",\"type\":\"shop.order.created\",\"data\":{\"order_id\":$n}}"
  echo
done
echo "run: three sample events posted; post your own (see above), Ctrl-C to stop."
echo "run: watch them arrive live at http://$listen/ui/live (a sample event every 3 s from now)"
n=3
while kill -0 $node 2>/dev/null; do
  sleep 3 # the demo's pace
  n=$((n + 1))
  curl -fsS -o /dev/null -X POST "http://$listen/v1/events" \
    -H 'content-type: application/cloudevents+json' \
    -d "{\"specversion\":\"1.0\",\"id\":\"sample-$n\",\"source\":\"/run.sh\",\"type\":\"shop.order.created\",\"data\":{\"order_id\":$n}}" || true
done
wait $node
