#!/usr/bin/env bash
# Checks the service through clients other than our own: grpcio (Python)
# sees bad requests as INVALID_ARGUMENT with small trailers; `buf curl
# --protocol connect|grpcweb` and plain `curl` with JSON answer the README's
# first calls alike. Starts the debug binary (built by scripts/test.sh) on a
# free port with the embedded store; grpcio in a virtualenv and buf (npm)
# under target/.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/clients-venv
scripts/venv.sh "$venv" grpcio==1.85.3 grpcio-tools==1.85.1
stubs=target/clients-stubs
mkdir -p "$stubs"
"$venv/bin/python" -m grpc_tools.protoc -Iproto --python_out="$stubs" --grpc_python_out="$stubs" proto/leadscore/v1/leadscore.proto

node=target/clients-node
[ -x "$node/node_modules/.bin/buf" ] || npm install --silent --no-audit --no-fund --prefix "$node" @bufbuild/buf@1.75.0 >/dev/null
command -v curl >/dev/null 2>&1 || { echo "curl is missing: apt-get install curl" >&2; exit 1; }

[ -x target/debug/leadscore ] || cargo build --locked
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
RUST_LOG=warn target/debug/leadscore serve --grpc-addr "127.0.0.1:$port" --metrics-addr off 2>target/client-check.log &
service=$!
trap 'kill $service 2>/dev/null; wait $service 2>/dev/null || true' EXIT
PYTHONPATH="$stubs" "$venv/bin/python" tests/clients/grpcio_errors.py "127.0.0.1:$port"
python3 tests/clients/connect_calls.py "$node/node_modules/.bin/buf" "127.0.0.1:$port"
