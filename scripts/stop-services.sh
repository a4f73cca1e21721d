#!/usr/bin/env bash
# Stop the services Nefos's scripts started, each by the pid file its script
# wrote, and only while that pid is still the process the script started:
#
#   podman    `podman system service` on var/podman/podman.sock (scripts/ensure-podman.sh)
#   redis     the loopback redis-server under var/redis (scripts/ensure-redis.sh)
#   libvirt   libvirtd and virtlogd, when they run as plain daemons (no systemd;
#             scripts/ensure-libvirt.sh); under systemd they are left to it
#
#   scripts/stop-services.sh              all of them (`make stop`)
#   scripts/stop-services.sh podman ...   only those named
#
# PostgreSQL is Debian's cluster, shared with whatever else uses it: stop it with
# `pg_ctlcluster <version> main stop` (see `pg_lsclusters`).
set -uo pipefail
cd "$(dirname "$0")/.."

# stop NAME PIDFILE PATTERN: SIGTERM the pid in PIDFILE if its command line
# contains PATTERN, wait up to 10 s, then SIGKILL.
stop() {
  local name=$1 pidfile=$2 pattern=$3 pid cmdline
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile" 2>/dev/null || true)
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; return 0; }
  cmdline=$(tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline" || true)
  [[ "$cmdline" == *"$pattern"* ]] || return 0
  echo "Stopping $name (pid $pid)..."
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

what=("$@")
[ ${#what[@]} -gt 0 ] || what=(podman redis libvirt)
for w in "${what[@]}"; do
  case "$w" in
    podman)
      stop "the podman service" var/podman/service.pid "system service"
      rm -f var/podman/podman.sock ;;
    redis) stop "redis" var/redis/redis.pid "redis-server" ;;
    libvirt)
      if [ ! -d /run/systemd/system ]; then
        stop libvirtd /run/libvirtd.pid libvirtd
        stop virtlogd /run/virtlogd.pid virtlogd
      fi ;;
    *) echo "stop-services: unknown service $w (podman, redis, libvirt)" >&2; exit 2 ;;
  esac
done
