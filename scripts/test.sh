#!/usr/bin/env bash
# Runs every test: unit tests, doc tests, and the integration suites against real
# nats-server processes and clusters. Installs the pinned nats-server and cargo-nextest
# and Debian's chromium and chromium-driver (the live page's browser test) when they are
# missing. Extra arguments go to `cargo nextest run`.
set -euo pipefail
cd "$(dirname "$0")/.."

NATS_SERVER_BIN=$(scripts/ensure-nats-server.sh)
export NATS_SERVER_BIN
echo "test: nats-server $("$NATS_SERVER_BIN" --version) at $NATS_SERVER_BIN" >&2

# The live page's browser test: Debian's chromium and chromium-driver.
read -r CHROMIUM_BIN CHROMEDRIVER_BIN < <(scripts/ensure-chromium.sh)
export CHROMIUM_BIN CHROMEDRIVER_BIN

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "test: installing cargo-nextest" >&2
  cargo install --locked cargo-nextest
fi

# The node suites run the bus-node binary as a process, and the presence suite runs the
# billing_worker example as a second member process (nextest builds neither).
cargo build -p bus-node
cargo build -p bus-sdk --examples

profile=default
[ -n "${CI:-}" ] && profile=ci
cargo nextest run --workspace --all-targets --profile "$profile" "$@"
# nextest does not run doc tests.
cargo test --workspace --doc --quiet
