#!/usr/bin/env bash
# Install (from Debian) and start a Redis server of Nefos's own for the tests:
# loopback only, on port ${NEFOS_REDIS_PORT:-6390}, its files under var/redis.
# Idempotent. Prints the redis:// URL on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=$(command -v sudo || true)
[ "$(id -u)" = 0 ] && SUDO=""
export DEBIAN_FRONTEND=noninteractive
PORT=${NEFOS_REDIS_PORT:-6390}
DIR="$PWD/var/redis"
mkdir -p "$DIR"

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  echo "Installing Redis from Debian..." >&2
  $SUDO apt-get -o DPkg::Lock::Timeout=300 update -qq >&2
  $SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -qq redis-server redis-tools >/dev/null
  # The Debian package starts its own server on 6379; ours is separate.
fi

ping() { redis-cli -h 127.0.0.1 -p "$PORT" ping 2>/dev/null | grep -qx PONG; }
if ! ping; then
  redis-server --bind 127.0.0.1 --port "$PORT" --dir "$DIR" --daemonize yes \
    --pidfile "$DIR/redis.pid" --logfile "$DIR/redis.log" \
    --save "" --appendonly no --protected-mode yes >&2
  for _ in $(seq 1 50); do ping && break; sleep 0.1; done
  ping || { echo "Redis did not start on port $PORT (see $DIR/redis.log)" >&2; exit 1; }
fi
echo "redis://127.0.0.1:$PORT/0"
