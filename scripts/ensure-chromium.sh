#!/usr/bin/env bash
# Prints the paths of a headless browser and its driver for the browser tests on stdout,
# on one line: `<chromium> <chromedriver>`. They are $CHROMIUM_BIN and $CHROMEDRIVER_BIN
# when both are set to executables; otherwise Debian's /usr/bin/chromium and
# /usr/bin/chromedriver (packages `chromium`, `chromium-driver`), installed first with
# apt-get when either is missing (non-interactive, quiet, through `sudo -n` unless root).
# Never prompts. Only errors go to stderr; they make it exit non-zero. scripts/test.sh:
#
#   read -r CHROMIUM_BIN CHROMEDRIVER_BIN < <(scripts/ensure-chromium.sh)
set -euo pipefail

CHROMIUM=/usr/bin/chromium
CHROMEDRIVER=/usr/bin/chromedriver

fail() {
    printf 'ensure-chromium: error: %s\n' "$*" >&2
    exit 1
}

if [[ -n "${CHROMIUM_BIN:-}" && -n "${CHROMEDRIVER_BIN:-}" ]]; then
    for bin in "${CHROMIUM_BIN}" "${CHROMEDRIVER_BIN}"; do
        [[ -x "${bin}" ]] || fail "${bin} (from CHROMIUM_BIN / CHROMEDRIVER_BIN) is not an executable"
        [[ "${bin}" != *[[:space:]]* ]] || fail "${bin}: a path with spaces cannot be printed on one line"
    done
    printf '%s %s\n' "${CHROMIUM_BIN}" "${CHROMEDRIVER_BIN}"
    exit 0
fi

if [[ -x "${CHROMIUM}" && -x "${CHROMEDRIVER}" ]]; then
    printf '%s %s\n' "${CHROMIUM}" "${CHROMEDRIVER}"
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
printf '%s %s\n' "${CHROMIUM}" "${CHROMEDRIVER}"
