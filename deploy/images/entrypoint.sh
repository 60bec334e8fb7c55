#!/bin/sh
# Entrypoint of the orion-virt/oriond image (deploy/images/oriond.Dockerfile): what a Kubernetes
# DaemonSet needs on top of server/entrypoint.sh, which keeps the seeds' behaviour (server.conf
# generated from BIND_ADDR, PORT, VGPU and ORION_CONTROLLER, then oriond in the foreground; see
# its header for the defaults and ORION_SERVER_CONF, ORION_REGENERATE_CONF, ORION_TOKEN_KEY_FILE).
#
#   BIND_ADDR             the data-plane address (ORION_BIND_ADDR, the node label's name, as well)
#   BIND_NET              an interface (ORION_BIND_NET as well), e.g. eth0: BIND_ADDR becomes its
#                         IPv4 address, waited for ("Waiting for net eth0 becoming ready ...")
#   ORION_WAIT_FOR_KEYS   1: wait until the controller's token key and /etc/orion/controller.key
#                         exist (the controller creates them at its first start) instead of exiting
#
#   entrypoint.sh [--dry-run] [ORIOND ARGS...]
#
# --dry-run writes server.conf, prints it and exits without waiting for keys or running oriond.
set -eu

DRY_RUN=0
if [ "${1:-}" = --dry-run ]; then DRY_RUN=1; shift; fi

say() { echo "entrypoint.sh: $*" >&2; }

here=$(cd "$(dirname "$0")" && pwd)
SERVER_ENTRYPOINT="${ORION_SERVER_ENTRYPOINT:-}"
if [ -z "$SERVER_ENTRYPOINT" ]; then
    # in the image: next to this file; in a checkout: the repository's server/entrypoint.sh
    for c in "$here/orion-server-entrypoint.sh" "$here/../../server/entrypoint.sh"; do
        if [ -f "$c" ]; then SERVER_ENTRYPOINT=$c; break; fi
    done
fi
[ -n "$SERVER_ENTRYPOINT" ] || { say "server/entrypoint.sh not found (set ORION_SERVER_ENTRYPOINT)"; exit 2; }

if [ -z "${BIND_ADDR:-}" ] && [ -n "${ORION_BIND_ADDR:-}" ]; then BIND_ADDR=$ORION_BIND_ADDR; fi
BIND_NET="${BIND_NET:-${ORION_BIND_NET:-}}"
if [ -n "$BIND_NET" ]; then
    case "$BIND_NET" in *[!0-9A-Za-z._@-]*) say "BIND_NET=$BIND_NET is not an interface name"; exit 2 ;; esac
    n=0
    while :; do
        addr=$(ip -4 -o addr show dev "$BIND_NET" 2>/dev/null | awk '{ split($4, a, "/"); print a[1]; exit }')
        [ -n "$addr" ] && break
        if [ $((n % 15)) = 0 ]; then say "[INFO] Waiting for net $BIND_NET becoming ready ..."; fi
        n=$((n + 1))
        sleep "${ORION_WAIT_INTERVAL:-2}"
    done
    if [ -n "${BIND_ADDR:-}" ] && [ "$BIND_ADDR" != "$addr" ]; then
        say "BIND_NET=$BIND_NET: bind_addr $addr (instead of BIND_ADDR=$BIND_ADDR)"
    fi
    BIND_ADDR=$addr
fi
if [ -n "${BIND_ADDR:-}" ]; then export BIND_ADDR; fi

if [ "$DRY_RUN" = 1 ]; then
    CONF="${ORION_SERVER_CONF:-/etc/orion/server.conf}"
    ORIOND=true sh "$SERVER_ENTRYPOINT" "$@" >&2
    cat "$CONF"
    exit 0
fi

if [ "${ORION_WAIT_FOR_KEYS:-0}" = 1 ] && [ "${ORION_CONTROLLER:-}" != none ]; then
    n=0
    for key in "${ORION_TOKEN_KEY_FILE:-/etc/orion/token.key}" /etc/orion/controller.key; do
        while [ ! -s "$key" ]; do
            if [ $((n % 15)) = 0 ]; then
                say "waiting for $key (the Orion Controller creates it at its first start; a TCP pool: the orion-keys Secret)"
            fi
            n=$((n + 1))
            sleep "${ORION_WAIT_INTERVAL:-2}"
        done
    done
fi

exec sh "$SERVER_ENTRYPOINT" "$@"
