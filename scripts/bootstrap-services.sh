#!/usr/bin/env bash
# Install (from Debian) and start the services the test suite needs, then write
# their addresses to var/test-services.env. Idempotent: safe to run every time.
#
#   PostgreSQL: a local cluster with a `nefos` role that may create databases;
#               each test session makes its own database and drops it after.
#   Podman:     `podman system service` on var/podman/podman.sock, serving the
#               Docker Engine API that the docker driver and its contract tests
#               use, plus the local test image localhost/nefos-busybox:test.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p var
SUDO=$(command -v sudo || true)
[ "$(id -u)" = 0 ] && SUDO=""
export DEBIAN_FRONTEND=noninteractive

die() { echo "bootstrap-services: $*" >&2; exit 1; }

# Wait for the dpkg lock rather than fail when another apt run holds it.
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

# --- PostgreSQL ---------------------------------------------------------------
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  echo "Installing PostgreSQL from Debian..."
  apt_install postgresql
fi
if [ -z "$(pg_lsclusters -h 2>/dev/null)" ]; then
  ver=$(ls /usr/lib/postgresql | sort -V | tail -1)
  $SUDO pg_createcluster "$ver" main >/dev/null
fi
read -r PG_VER PG_NAME PG_PORT PG_STATUS _ < <(pg_lsclusters -h | head -1)
if [ "$PG_STATUS" != "online" ]; then
  $SUDO pg_ctlcluster "$PG_VER" "$PG_NAME" start
fi
for _ in $(seq 1 30); do
  pg_isready -q -h 127.0.0.1 -p "$PG_PORT" && break
  sleep 1
done
pg_isready -q -h 127.0.0.1 -p "$PG_PORT" || { echo "PostgreSQL did not start" >&2; exit 1; }
as_postgres() { $SUDO runuser -u postgres -- "$@" 2>/dev/null || $SUDO su postgres -c "$*"; }
as_postgres psql -q -p "$PG_PORT" -d postgres -v ON_ERROR_STOP=1 <<'SQL'
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'nefos') THEN
    CREATE ROLE nefos LOGIN PASSWORD 'nefos' CREATEDB;
  END IF;
END $$;
SQL

echo "PostgreSQL $PG_VER on port $PG_PORT: ready"

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
    cmdline=$(tr '\0' ' ' < "/proc/$old/cmdline" 2>/dev/null || true)
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
scripts/build-test-image.sh || die "building the test image (scripts/build-test-image.sh) failed"
echo "Podman $(podman version --format '{{.Client.Version}}' 2>/dev/null) on $PODMAN_SOCK: ready"

cat > var/test-services.env.tmp <<ENV
export NEFOS_TEST_POSTGRES_URL=postgresql://nefos:nefos@127.0.0.1:${PG_PORT}/postgres
export NEFOS_TEST_DOCKER_HOST=unix://${PODMAN_SOCK}
export CONTAINERS_CONF=${CONTAINERS_CONF}
ENV
mv var/test-services.env.tmp var/test-services.env
