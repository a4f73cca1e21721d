#!/usr/bin/env bash
# Install wrk (the HTTP load generator the benchmarks use) from Debian if it is
# missing. Idempotent; exits non-zero if it cannot be installed, and the
# benchmarks then fall back to their own (slower, in-Python) load generator.
set -euo pipefail
command -v wrk >/dev/null 2>&1 && exit 0
SUDO=$(command -v sudo || true)
[ "$(id -u)" = 0 ] && SUDO=""
export DEBIAN_FRONTEND=noninteractive
echo "Installing wrk from Debian..." >&2
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq wrk >/dev/null
command -v wrk >/dev/null 2>&1
