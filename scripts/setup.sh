#!/usr/bin/env bash
# One-time set-up of a fresh machine: system packages (Debian/Ubuntu via apt-get, macOS:
# the Xcode command line tools), then the npm packages (Bun itself comes from npm).
# Safe to re-run: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(uname -s)" = "Linux" ]; then
  # libopenblas-dev: BLAS (linked statically into the native library); gcc: compiler;
  # python3-torch: the PyTorch reference of the parity/interop tests and the benchmark.
  packages=(gcc libc6-dev libopenblas-dev python3 python3-torch)
  missing=()
  for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
elif [ "$(uname -s)" = "Darwin" ]; then
  xcode-select -p >/dev/null 2>&1 || { echo "setup: install the Xcode command line tools: xcode-select --install" >&2; exit 1; }
fi

if [ ! -x node_modules/.bin/bun ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
