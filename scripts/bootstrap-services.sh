#!/usr/bin/env bash
# Install (from Debian) and start the services the test suite needs, then write
# their addresses to var/test-services.env. Idempotent: safe to run every time.
#
#   PostgreSQL: a local cluster with a `nefos` role that may create databases;
#               each test session makes its own database and drops it after.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p var
SUDO=$(command -v sudo || true)
[ "$(id -u)" = 0 ] && SUDO=""
export DEBIAN_FRONTEND=noninteractive

apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then $SUDO apt-get update -qq; apt_updated=1; fi
  $SUDO apt-get install -y -qq "$@" >/dev/null
}

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

cat > var/test-services.env <<ENV
export NEFOS_TEST_POSTGRES_URL=postgresql://nefos:nefos@127.0.0.1:${PG_PORT}/postgres
ENV
echo "PostgreSQL $PG_VER on port $PG_PORT: ready"
