#!/usr/bin/env bash
# Lints, renders and validates the Helm chart offline (no helm binary, no
# cluster): Helm's Go SDK through the helm-python-sdk package, Kubernetes
# schemas through kubernetes-validate, in a virtualenv under target/.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/helm-venv
if [ ! -x "$venv/bin/python" ]; then
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    # Debian ships venv support separately.
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "python3-venv is missing: installing it with apt-get" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
    rm -rf "$venv"
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install -q helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 PyYAML==6.0.3
fi
PATH="$PWD/$venv/bin:$PATH" "$venv/bin/python" scripts/helm-check.py 2>&1 | grep -v 'funcMap fail message='
