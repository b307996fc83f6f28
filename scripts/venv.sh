#!/usr/bin/env bash
# Makes a Python virtualenv at $1 with the pinned packages that follow
# (once; later calls reuse it). Installs python3-venv when Debian lacks it.
set -euo pipefail
venv=$1
shift
if [ ! -x "$venv/bin/python" ]; then
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "python3-venv is missing: installing it with apt-get" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
    rm -rf "$venv"
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install -q "$@"
fi
