#!/usr/bin/env bash
# Install Podman from Debian (when missing) and serve the Docker Engine API on
# var/podman/podman.sock, with the local image localhost/nefos-busybox:test.
# Used by `make run` (the first container host) and by the test bootstrap.
# Idempotent: safe to run every time. Prints the socket's URI last.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p var
SUDO=$(command -v sudo || true)
[ "$(id -u)" = 0 ] && SUDO=""
export DEBIAN_FRONTEND=noninteractive

die() { echo "ensure-podman: $*" >&2; exit 1; }

APT=($SUDO apt-get -o DPkg::Lock::Timeout=300)
apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then
    "${APT[@]}" update -qq || die "apt-get update failed (needed to install: $*)"
    apt_updated=1
  fi
  "${APT[@]}" install -y -qq "$@" >/dev/null || die "apt-get install $* failed"
}
deb_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

# --- Podman -------------------------------------------------------------------
# crun fails on this host's cgroup layout, so runc with the cgroupfs manager;
# default_ulimits=[] because the stock nofile ulimit cannot be raised here. The
# image storage stays the default (root) one, so the podman CLI and the service
# see the same images.
PODMAN_DIR="$PWD/var/podman"
PODMAN_SOCK="$PODMAN_DIR/podman.sock"
export CONTAINERS_CONF="$PODMAN_DIR/containers.conf"
mkdir -p "$PODMAN_DIR"
# One bootstrap at a time starts the service (two `make test` runs may race).
exec 9>"$PODMAN_DIR/bootstrap.lock"
flock -w 300 9 || die "timed out waiting for another bootstrap holding $PODMAN_DIR/bootstrap.lock"

need=()
for pkg in podman runc conmon catatonit iptables busybox-static uidmap slirp4netns fuse-overlayfs curl; do
  deb_installed "$pkg" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "Installing ${need[*]} from Debian..."
  apt_install "${need[@]}"
fi
command -v podman >/dev/null || die "podman is not on PATH after installing it"
command -v runc >/dev/null || die "runc is not on PATH after installing it"

cat > "$CONTAINERS_CONF.tmp" <<'CONF'
# Written by scripts/bootstrap-services.sh; edits are overwritten.
[containers]
default_ulimits = []
# No journald here: keep container logs and events in files.
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
mv "$CONTAINERS_CONF.tmp" "$CONTAINERS_CONF"

podman_ping() { curl -sf --max-time 5 --unix-socket "$PODMAN_SOCK" http://d/_ping 2>/dev/null | grep -qx OK; }
if ! podman_ping; then
  # A service we started before that no longer answers: stop it (by its pid,
  # and only if it is still that podman service) before starting a fresh one.
  if [ -f "$PODMAN_DIR/service.pid" ]; then
    old=$(cat "$PODMAN_DIR/service.pid")
    cmdline=$(tr '\0' ' ' 2>/dev/null < "/proc/$old/cmdline" || true)
    if [ -n "$old" ] && [[ "$cmdline" == *"system service"*"unix://$PODMAN_SOCK"* ]]; then
      echo "The podman service (pid $old) does not answer: restarting it."
      kill "$old" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$old" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$old" 2>/dev/null || true
    fi
  fi
  rm -f "$PODMAN_SOCK"
  echo "Starting podman system service on $PODMAN_SOCK (log: $PODMAN_DIR/service.log)..."
  # setsid + nohup + every fd redirected: the service outlives this script and
  # holds no pipe of the caller (make, tee, CI) open, nor the bootstrap lock (fd 9).
  setsid nohup podman system service --time=0 "unix://$PODMAN_SOCK" \
    </dev/null >>"$PODMAN_DIR/service.log" 2>&1 9>&- &
  echo $! > "$PODMAN_DIR/service.pid"
  for _ in $(seq 1 300); do
    podman_ping && break
    kill -0 "$(cat "$PODMAN_DIR/service.pid")" 2>/dev/null || break
    sleep 0.1
  done
  if ! podman_ping; then
    tail -n 20 "$PODMAN_DIR/service.log" >&2 || true
    die "podman system service did not answer on $PODMAN_SOCK (log above: $PODMAN_DIR/service.log)"
  fi
fi
# Nefos's containers whose process died without the engine's clean-up (killed
# with their conmon, or a crash that left /run): Podman still calls them running
# (or stuck `stopping`), and their firewall rules still send their host ports to
# an address nothing answers. A later container published on one of those ports
# gets a rule behind the stale one and is unreachable (its checks time out).
# Remove them: Nefos's reconciler reports their replicas `missing`.
for id in $(podman ps -a -q --filter label=nefos.managed=true 2>/dev/null); do
  read -r state pid < <(podman inspect --format '{{.State.Status}} {{.State.Pid}}' "$id" 2>/dev/null) || continue
  case "$state" in running|stopping|paused) ;; *) continue ;; esac
  if [ "${pid:-0}" -gt 0 ] && kill -0 "$pid" 2>/dev/null; then continue; fi
  echo "Removing container $id: Podman calls it $state but its process ${pid:-?} is gone."
  podman rm -f -t 0 "$id" >/dev/null 2>&1 || echo "ensure-podman: could not remove $id" >&2
done
scripts/build-test-image.sh || die "building the test image (scripts/build-test-image.sh) failed"
echo "Podman $(podman version --format '{{.Client.Version}}' 2>/dev/null) on $PODMAN_SOCK: ready"

echo "unix://$PODMAN_SOCK"
