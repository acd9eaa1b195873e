#!/usr/bin/env bash
# Sourced by scripts/test.sh and scripts/demo.sh: makes .venv with fedge and what it needs.
# Usage: source scripts/setup-env.sh EXTRAS      (EXTRAS e.g. "all,dev")
set -euo pipefail

FEDGE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FEDGE_VENV=${FEDGE_VENV:-$FEDGE_ROOT/.venv}
PYTHON=${PYTHON:-python3}

# Keep Flower, Ray and Hugging Face local: no telemetry, no update checks, no hub downloads.
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 RAY_USAGE_STATS_ENABLED=0
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1

fedge_setup_python() {
  local extras=$1
  if [ ! -x "$FEDGE_VENV/bin/python" ]; then
    "$PYTHON" -m venv "$FEDGE_VENV"
  fi
  "$FEDGE_VENV/bin/python" -m pip install -q --upgrade pip
  # torch first, pinned: the CPU build; an open range would pull a multi-GB CUDA build.
  "$FEDGE_VENV/bin/python" -m pip install -q "torch==2.13.0"
  "$FEDGE_VENV/bin/python" -m pip install -q -e "$FEDGE_ROOT[$extras]"
}

# Debian packages, installed only where missing (apt-get needs root; otherwise say what to do).
fedge_setup_debian() {
  local missing=() package
  for package in "$@"; do
    case $package in
      mosquitto) command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto) ;;
      chromium) [ -x /usr/bin/chromium ] || missing+=(chromium) ;;
      nginx) command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx) ;;
    esac
  done
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
    else
      echo "setup: missing Debian packages (install them as root): ${missing[*]}" >&2
    fi
  fi
  export PATH="/usr/sbin:$PATH"
}

# The real servers and tools the integration tiers start: mosquitto (Debian), Chromium (Debian,
# renders the run report; Playwright drives it, no browser download), nginx (Debian, the Fleet
# API proxy) and Azurite (npm).
# moto's S3 server comes with the dev extra. Installed only where missing.
fedge_setup_servers() {
  fedge_setup_debian mosquitto chromium nginx
  local node_dir="$FEDGE_ROOT/.ci/cache/node"
  if [ ! -x "$node_dir/node_modules/.bin/azurite-blob" ]; then
    if command -v npm >/dev/null 2>&1; then
      mkdir -p "$node_dir"
      npm install --prefix "$node_dir" --no-audit --no-fund --loglevel=error "azurite@3" >/dev/null
    else
      echo "setup: npm is missing; Azurite cannot be installed" >&2
    fi
  fi
  export PATH="$node_dir/node_modules/.bin:/usr/sbin:$PATH"
}
