#!/usr/bin/env bash
# Makes sure Debian's headless browser for the browser tests is installed:
# /usr/bin/chromium and /usr/bin/chromedriver (packages `chromium`, `chromium-driver`).
# Installs them with apt-get when either is missing: non-interactive, quiet, through
# `sudo -n` unless root. Prints nothing when all is well; errors go to stderr and make it
# exit non-zero. scripts/test.sh runs it and exports CHROMIUM_BIN and CHROMEDRIVER_BIN.
set -euo pipefail

CHROMIUM=/usr/bin/chromium
CHROMEDRIVER=/usr/bin/chromedriver

fail() {
    printf 'ensure-chromium: error: %s\n' "$*" >&2
    exit 1
}

if [[ -x "${CHROMIUM}" && -x "${CHROMEDRIVER}" ]]; then
    exit 0
fi

command -v apt-get >/dev/null 2>&1 \
    || fail "${CHROMIUM} or ${CHROMEDRIVER} is missing and there is no apt-get: install chromium and its chromedriver, then set CHROMIUM_BIN and CHROMEDRIVER_BIN"

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 \
        || fail "not root and no sudo: run 'apt-get install chromium chromium-driver' as root"
    SUDO=(sudo -n)
fi

# apt-get's progress goes to a log that is shown only when it fails.
log="$(mktemp)"
trap 'rm -f "${log}"' EXIT
export DEBIAN_FRONTEND=noninteractive
if ! { "${SUDO[@]}" apt-get update -qq \
    && "${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium chromium-driver; } \
    >"${log}" 2>&1; then
    cat "${log}" >&2
    fail "apt-get could not install chromium and chromium-driver (output above)"
fi

for bin in "${CHROMIUM}" "${CHROMEDRIVER}"; do
    [[ -x "${bin}" ]] || fail "apt-get finished but ${bin} is still missing"
done
