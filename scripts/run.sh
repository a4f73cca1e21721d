#!/usr/bin/env bash
# `make run`: start the local Podman and libvirt when they are not running, serve
# Nefos in the foreground, and on exit (Ctrl-C) stop the services this run started;
# services that were already running are left as they were. KEEP_SERVICES=1 keeps
# them; `make stop` (scripts/stop-services.sh) stops them later.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PODMAN_SOCK="$PWD/var/podman/podman.sock"

podman_up() { curl -sf --max-time 5 --unix-socket "$PODMAN_SOCK" http://d/_ping 2>/dev/null | grep -qx OK; }
libvirt_up() { timeout 10 virsh -q -c qemu:///system version >/dev/null 2>&1; }

started=()
podman_up && podman_before=1 || podman_before=""
libvirt_up && libvirt_before=1 || libvirt_before=""
scripts/ensure-podman.sh >/dev/null \
  || echo "warning: Podman could not be started (see scripts/ensure-podman.sh); Nefos starts with no container host" >&2
scripts/ensure-libvirt.sh >/dev/null \
  || echo "warning: libvirt could not be started (see scripts/ensure-libvirt.sh); Nefos starts with no VM host" >&2
[ -z "$podman_before" ] && podman_up && started+=(podman)
[ -z "$libvirt_before" ] && libvirt_up && started+=(libvirt)

stop_started() {
  if [ ${#started[@]} -gt 0 ]; then
    if [ -n "${KEEP_SERVICES:-}" ]; then
      echo "Left running (KEEP_SERVICES): ${started[*]}; \`make stop\` stops them."
    else
      scripts/stop-services.sh "${started[@]}"
    fi
  fi
}
trap stop_started EXIT
trap 'exit 130' INT TERM

# Not exec: this shell outlives the server to stop what it started.
CONTAINERS_CONF="$PWD/var/podman/containers.conf" \
  NEFOS_LOCAL_DOCKER_URI="${NEFOS_LOCAL_DOCKER_URI:-unix://$PODMAN_SOCK}" \
  "$VENV/bin/nefos" serve "$@"
