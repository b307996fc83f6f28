#!/usr/bin/env bash
# Generates the Python stubs from the proto into gen/ (grpcio-tools brings
# the well-known types). Run from anywhere; needs requirements.txt installed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$here/gen"
"${PYTHON:-python3}" -m grpc_tools.protoc -I"$here/../../proto" --python_out="$here/gen" --grpc_python_out="$here/gen" \
  "$here/../../proto/leadscore/v1/leadscore.proto"
