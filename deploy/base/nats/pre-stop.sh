#!/bin/sh
# nats-server's preStop hook: lame duck mode, returning only once it is in effect.
#
# kubelet sends SIGTERM as soon as the hook returns, and `nats-server --signal ldm`
# returns as soon as the signal is sent; a SIGTERM handled before lame duck mode begins
# drops every client at once. In lame duck mode the server refuses new clients and its
# /healthz fails (within milliseconds of the signal), so this waits for that, 5 s at
# most. The server then moves its clients away over lame_duck_duration and exits by
# itself (nats.conf). tests/it/deploy_manifests.rs runs this script, then SIGTERM at once.
set -u
pid_file=${NATS_PID_FILE:-/var/run/nats/nats.pid}
monitor=${NATS_MONITOR:-http://127.0.0.1:8222}
nats-server --signal "ldm=$pid_file" || exit 1
i=0
while [ "$i" -lt 50 ]; do
  wget -q -T 1 -O /dev/null "$monitor/healthz" || exit 0
  i=$((i + 1))
  sleep 0.1
done
echo "pre-stop: lame duck mode not seen within 5 s" >&2
