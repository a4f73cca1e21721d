#!/usr/bin/env bash
# Install (from Debian) and start the services the test suite needs, then write
# their addresses to var/test-services.env. Idempotent: safe to run every time.
#
#   PostgreSQL: a local cluster with a `nefos` role that may create databases;
#               each test session makes its own database and drops it after.
#   Podman:     `podman system service` on var/podman/podman.sock, serving the
#               Docker Engine API that the docker driver and its contract tests
#               use, plus the local test image localhost/nefos-busybox:test.
#   libvirt:    libvirtd + QEMU (qemu:///system) with the `default` storage pool,
#               and the tiny VM image var/images/nefos-tiny (scripts/ensure-libvirt.sh).
#   Redis:      a loopback redis-server of our own on port 6390 (scripts/ensure-redis.sh)
#               for the event bus's pub/sub fan-out and the rate limiter.
#   Chromium:   Debian's, for the web console's browser tests (Playwright drives it).
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

# --- wrk ----------------------------------------------------------------------
# The HTTP load generator the benchmarks compare with (bench_api, bench_loadgen).
if ! command -v wrk >/dev/null 2>&1; then
  echo "Installing wrk from Debian..."
  apt_install wrk
fi

# --- Chromium -----------------------------------------------------------------
# The web console's browser tests (tests/console) drive Debian's Chromium headless
# through Playwright, launched with this path: no browser is ever downloaded.
if ! command -v chromium >/dev/null 2>&1; then
  echo "Installing Chromium from Debian..."
  apt_install chromium
fi

# --- Podman -------------------------------------------------------------------
scripts/ensure-podman.sh >/dev/null || die "Podman could not be started (run scripts/ensure-podman.sh to see why)"
PODMAN_SOCK="$PWD/var/podman/podman.sock"
CONTAINERS_CONF="$PWD/var/podman/containers.conf"
echo "Podman on $PODMAN_SOCK: ready"

# --- libvirt -------------------------------------------------------------------
LIBVIRT_URI=$(scripts/ensure-libvirt.sh | tail -n 1) \
  || die "libvirt could not be started (run scripts/ensure-libvirt.sh to see why)"
echo "libvirt on $LIBVIRT_URI: ready"

# --- Redis --------------------------------------------------------------------
REDIS_URL=$(scripts/ensure-redis.sh | tail -n 1) \
  || die "Redis could not be started (run scripts/ensure-redis.sh to see why)"
echo "Redis on $REDIS_URL: ready"

cat > var/test-services.env.tmp <<ENV
export NEFOS_TEST_POSTGRES_URL=postgresql://nefos:nefos@127.0.0.1:${PG_PORT}/postgres
export NEFOS_TEST_DOCKER_HOST=unix://${PODMAN_SOCK}
export CONTAINERS_CONF=${CONTAINERS_CONF}
export NEFOS_TEST_LIBVIRT_URI=${LIBVIRT_URI}
export NEFOS_TEST_REDIS_URL=${REDIS_URL}
ENV
mv var/test-services.env.tmp var/test-services.env
