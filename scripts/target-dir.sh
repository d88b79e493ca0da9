#!/usr/bin/env bash
# Prints cargo's target directory for this workspace on stdout: where `cargo build` puts
# binaries, whether that is <repo>/target, $CARGO_TARGET_DIR or a `build.target-dir` in
# a cargo config. The scripts run what they built from there:
#
#   bin="$(scripts/target-dir.sh)/debug/bus-node"
set -euo pipefail
cd "$(dirname "$0")/.."

cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])'
