#!/usr/bin/env bash
# Make sure the Python we build .venv from has venv and pip (Debian splits them out).
set -euo pipefail
py=${1:-python3}
if ! command -v "$py" >/dev/null 2>&1 || ! "$py" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  echo "Installing python3, python3-venv and python3-pip from Debian..."
  export DEBIAN_FRONTEND=noninteractive
  $(command -v sudo || true) apt-get update -qq
  $(command -v sudo || true) apt-get install -y -qq python3 python3-venv python3-pip >/dev/null
fi
