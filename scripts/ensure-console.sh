#!/usr/bin/env bash
# Build the web console (console/, a Svelte + TypeScript app) into
# src/nefos/api/console_dist, where `nefos serve` serves it at /. Called by `make run`
# and `make test`; fast when nothing changed:
#   - Node.js and npm are installed from Debian when missing (Vite needs Node >= 20.19);
#   - `npm ci` runs only when package-lock.json (or Node's version) changed since the
#     last install (a stamp inside node_modules, which `npm ci` empties);
#   - `npm run build` runs only when a source file, the lockfile or Node changed since
#     the last build (a hash of them kept beside the build).
# Prints the build directory. FORCE=1 rebuilds.
set -euo pipefail
cd "$(dirname "$0")/.."
CONSOLE=console
OUT=src/nefos/api/console_dist
NODE_MIN=20.19
export DEBIAN_FRONTEND=noninteractive

die() { echo "ensure-console: $*" >&2; exit 1; }

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "Installing Node.js and npm from Debian..." >&2
  SUDO=$(command -v sudo || true)
  [ "$(id -u)" = 0 ] && SUDO=""
  $SUDO apt-get -o DPkg::Lock::Timeout=300 update -qq || die "apt-get update failed"
  $SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -qq nodejs npm >/dev/null \
    || die "apt-get install nodejs npm failed"
fi
node_version=$(node --version | sed 's/^v//')
if [ "$(printf '%s\n%s\n' "$NODE_MIN" "$node_version" | sort -V | head -1)" != "$NODE_MIN" ]; then
  die "the console's build (Vite) needs Node.js >= $NODE_MIN; this machine has $node_version"
fi

hash_of() { sha256sum "$@" | sha256sum | cut -c1-64; }

lock_hash=$( { echo "$node_version"; cat "$CONSOLE/package-lock.json"; } | sha256sum | cut -c1-64)
lock_stamp="$CONSOLE/node_modules/.nefos-lock-hash"
if [ "$(cat "$lock_stamp" 2>/dev/null)" != "$lock_hash" ]; then
  echo "Installing the console's packages (npm ci)..." >&2
  (cd "$CONSOLE" && npm ci --no-audit --no-fund --loglevel=error >&2) || die "npm ci failed"
  echo "$lock_hash" > "$lock_stamp"
fi

# Every file the build reads: sources, configs, the lockfile (not node_modules, not tests).
mapfile -t sources < <(find "$CONSOLE" \( -path "$CONSOLE/node_modules" -o -path "$CONSOLE/tests" \) -prune \
  -o -type f -print | LC_ALL=C sort)
build_hash=$( { echo "$node_version"; hash_of "${sources[@]}"; } | sha256sum | cut -c1-64)
build_stamp="$OUT/.nefos-build-hash"
if [ -n "${FORCE:-}" ] || [ ! -f "$OUT/index.html" ] || [ "$(cat "$build_stamp" 2>/dev/null)" != "$build_hash" ]; then
  echo "Building the web console..." >&2
  (cd "$CONSOLE" && npm run --silent build >&2) || die "the console's build failed"
  echo "$build_hash" > "$build_stamp"
fi
echo "$OUT"
