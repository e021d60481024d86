#!/usr/bin/env bash
# Set up spiralctl in .venv and run it:
#   ./dev.sh demo   generate data, train, evaluate, predict and plot on the built-in defaults
#   ./dev.sh test   lint and run the test suite
# Set-up makes sure clang is there (tinygrad's CPU backend compiles kernels with it),
# installing it with apt-get when it is missing and that is possible.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo "$@"
  else return 1
  fi
}

apt_install() {  # apt_install PACKAGE: install a Debian package, or say how and stop
  if command -v apt-get >/dev/null 2>&1 &&
     as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null; then
    return 0
  fi
  echo "error: $1 is missing and could not be installed here; run: sudo apt-get update && sudo apt-get install -y $1" >&2
  exit 1
}

ensure_clang() {
  command -v clang >/dev/null 2>&1 && return 0
  if [ "$(uname)" = Darwin ]; then
    echo "error: clang is missing; run: xcode-select --install" >&2
    exit 1
  fi
  echo "clang not found: installing it (tinygrad's CPU backend needs it)" >&2
  apt_install clang
}

ensure_opencl() {  # OpenCL on the CPU (pocl): the GPU kernels' tests run on it; skipped without it
  [ "$(uname)" = Darwin ] && return 0
  ls /etc/OpenCL/vendors/*.icd >/dev/null 2>&1 && return 0
  echo "OpenCL (pocl) not found: installing it for the GPU kernel tests" >&2
  if ! { command -v apt-get >/dev/null 2>&1 && as_root apt-get update -qq &&
         as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pocl-opencl-icd >/dev/null; }; then
    echo "note: pocl could not be installed; the GPU kernel tests on OpenCL will be skipped" >&2
  fi
}

ensure_venv() {  # ensure_venv EXTRAS
  if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PYTHON" -m venv "$VENV" >/dev/null 2>&1; then
      rm -rf "$VENV"
      echo "python venv support not found: installing python3-venv" >&2
      apt_install python3-venv
      "$PYTHON" -m venv "$VENV"
    fi
  fi
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".${1:+[$1]}"
}

case "${1:-}" in
  demo)
    ensure_clang
    ensure_venv plot
    PATH="$PWD/$VENV/bin:$PATH" bash examples/walkthrough.sh "${2:-demo}"
    ;;
  test)
    ensure_clang
    ensure_opencl
    ensure_venv test
    "$VENV/bin/ruff" check .
    "$VENV/bin/ruff" format --check .
    "$VENV/bin/python" -m pytest "${@:2}"
    ;;
  *)
    echo "usage: ./dev.sh demo | test [pytest arguments]" >&2
    exit 2
    ;;
esac
