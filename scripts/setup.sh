#!/usr/bin/env bash
# One-time set-up of a fresh machine: system packages (Debian/Ubuntu via apt-get, macOS:
# the Xcode command line tools), then the npm packages (Bun itself comes from npm).
# Safe to re-run: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Installed for its architecture (name:arch, else the native one or all)? Not `dpkg -s`,
# which fails on a name installed for two architectures (libopenblas-dev and :arm64).
installed() {
  local arch
  arch=$(dpkg --print-architecture)
  [[ "$1" == *:* ]] && arch=${1##*:}
  dpkg-query -W -f='${Architecture} ${db:Status-Status}\n' "${1%%:*}" 2>/dev/null | grep -Eq "^($arch|all) installed$"
}

# The release's cross toolchain (scripts/release.ts, tests/release.test.ts), for the tests
# only: the arm64 Linux library (gcc-aarch64-linux-gnu, OpenBLAS for arm64 from Debian
# multiarch) and qemu to run its executable; clang, lld (ld64.lld) and llvm (llvm-nm,
# llvm-objdump) for the macOS library (scripts/check-mps.sh). Debian amd64 only: Ubuntu
# serves arm64 packages from another archive (ports.ubuntu.com), so there the tests that
# need these skip and say why.
install_release_tools() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if [ "$(dpkg --print-architecture)" != amd64 ] || ! grep -qx 'ID=debian' /etc/os-release 2>/dev/null; then
    echo "setup: not Debian amd64: the cross toolchain of the release tests is not installed (those tests skip)"
    return 0
  fi
  local tools=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross libopenblas-dev:arm64 qemu-user-static clang lld llvm)
  local missing=() p
  for p in "${tools[@]}"; do
    installed "$p" || missing+=("$p")
  done
  [ "${#missing[@]}" -gt 0 ] || return 0
  echo "setup: installing the release tests' cross toolchain: ${missing[*]}"
  dpkg --print-foreign-architectures | grep -qx arm64 || $sudo dpkg --add-architecture arm64
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
}

if [ "$(uname -s)" = "Linux" ]; then
  # libopenblas-dev: BLAS (linked statically into the native library); gcc: compiler;
  # python3-torch: the PyTorch reference of the parity/interop tests and the benchmark.
  packages=(gcc libc6-dev libopenblas-dev python3 python3-torch)
  missing=()
  for p in "${packages[@]}"; do
    installed "$p" || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
  install_release_tools
elif [ "$(uname -s)" = "Darwin" ]; then
  xcode-select -p >/dev/null 2>&1 || { echo "setup: install the Xcode command line tools: xcode-select --install" >&2; exit 1; }
fi

if [ ! -x node_modules/.bin/bun ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
