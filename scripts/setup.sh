#!/usr/bin/env bash
# One-time set-up of a fresh machine: system packages (Debian/Ubuntu via apt-get, macOS:
# the Xcode command line tools), then the npm packages (Bun itself comes from npm).
# Safe to re-run: it installs only what is missing.
#
#   bash scripts/setup.sh [demo|test|bench|release] [--print-packages]
#
# Each command takes only what it needs (a profile; default test):
#   demo     builds the native library and dist/train and trains: a C compiler and BLAS.
#   test     the demo's packages, PyTorch (the reference of the parity/interop tests) and
#            the release's cross toolchain (tests/release.test.ts).
#   bench    the demo's packages and PyTorch, the reference run of the benchmark.
#   release  the demo's packages and the cross toolchain (scripts/release.ts).
# --print-packages prints the profile's apt packages, one a line, and exits (installs nothing).
set -euo pipefail
cd "$(dirname "$0")/.."

profile=test
print_only=0
for arg in "$@"; do
  case "$arg" in
    demo|test|bench|release) profile=$arg ;;
    --print-packages) print_only=1 ;;
    *) echo "setup: unknown argument '$arg' (expected demo, test, bench or release, and optionally --print-packages)" >&2; exit 2 ;;
  esac
done

# libopenblas-dev: BLAS (linked statically into the native library); gcc, libc6-dev: compiler.
build_packages=(gcc libc6-dev libopenblas-dev)
# python3-torch: PyTorch, with hundreds of packages behind it; only the reference runs need it.
torch_packages=(python3 python3-torch)
# The release's cross toolchain (scripts/release.ts, tests/release.test.ts): the arm64 Linux
# library (gcc-aarch64-linux-gnu, OpenBLAS for arm64 from Debian multiarch) and qemu to run
# its executable; clang, lld (ld64.lld) and llvm (llvm-nm, llvm-objdump) for the macOS
# library (scripts/check-mps.sh). Debian amd64 only: Ubuntu serves arm64 packages from
# another archive (ports.ubuntu.com), so there the tests that need these skip and say why.
release_tools=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross libopenblas-dev:arm64 qemu-user-static clang lld llvm)
case "$profile" in
  demo) packages=("${build_packages[@]}"); with_release_tools=0 ;;
  test) packages=("${build_packages[@]}" "${torch_packages[@]}"); with_release_tools=1 ;;
  bench) packages=("${build_packages[@]}" "${torch_packages[@]}"); with_release_tools=0 ;;
  release) packages=("${build_packages[@]}"); with_release_tools=1 ;;
esac

if [ "$print_only" -eq 1 ]; then
  printf '%s\n' "${packages[@]}"
  [ "$with_release_tools" -eq 0 ] || printf '%s\n' "${release_tools[@]}"
  exit 0
fi

# Installed for its architecture (name:arch, else the native one or all)? Not `dpkg -s`,
# which fails on a name installed for two architectures (libopenblas-dev and :arm64).
installed() {
  local arch
  arch=$(dpkg --print-architecture)
  [[ "$1" == *:* ]] && arch=${1##*:}
  dpkg-query -W -f='${Architecture} ${db:Status-Status}\n' "${1%%:*}" 2>/dev/null | grep -Eq "^($arch|all) installed$"
}

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

# apt-get install of the packages not installed yet; $1 says what they are for.
apt_install() {
  local what=$1 missing=() p
  shift
  for p in "$@"; do
    installed "$p" || missing+=("$p")
  done
  [ "${#missing[@]}" -gt 0 ] || return 0
  echo "setup ($profile): installing $what: ${missing[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
}

if [ "$(uname -s)" = "Linux" ]; then
  apt_install "the packages" "${packages[@]}"
  if [ "$with_release_tools" -eq 1 ]; then
    if [ "$(dpkg --print-architecture)" != amd64 ] || ! grep -qx 'ID=debian' /etc/os-release 2>/dev/null; then
      echo "setup: not Debian amd64: the release's cross toolchain is not installed (the release tests skip)"
    else
      dpkg --print-foreign-architectures | grep -qx arm64 || $sudo dpkg --add-architecture arm64
      apt_install "the release's cross toolchain" "${release_tools[@]}"
    fi
  fi
elif [ "$(uname -s)" = "Darwin" ]; then
  xcode-select -p >/dev/null 2>&1 || { echo "setup: install the Xcode command line tools: xcode-select --install" >&2; exit 1; }
fi

if [ ! -x node_modules/.bin/bun ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
