#!/usr/bin/env bash
# Checks the service through clients other than our own, each asserting what
# it answers: grpcio (Python) sees bad requests as INVALID_ARGUMENT with small
# trailers; `buf curl --protocol connect|grpcweb` and plain `curl` with JSON
# answer the first calls of docs/http-and-clients.md alike; the Python and Node clients of
# clients/ (gRPC and HTTP/JSON) record, score, consume and acknowledge
# triggers (a crash before the ack redelivers), follow the change feed from a
# stored cursor and retry passing failures; webhooks reach a receiver that
# verifies them with the Standard Webhooks reference library, through
# refusals, time-outs, dropped connections, a receiver down and a killed
# service (tests/clients/webhooks.py, with its own redis-server). Starts the
# debug binary (built by scripts/test.sh) on a free port with the embedded
# store; Python packages in a virtualenv under target/, npm packages under
# target/ and clients/node.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/clients-venv
scripts/venv.sh "$venv" -r clients/python/requirements.txt
PYTHON="$venv/bin/python" clients/python/generate.sh

node=target/clients-node
scripts/node-tools.sh
[ -d clients/node/node_modules/standardwebhooks ] || npm ci --silent --no-audit --no-fund --prefix clients/node >/dev/null
"$node/node_modules/.bin/buf" lint
# buf.gen.yaml generates what it promises.
rm -rf target/buf-gen
PATH="$PWD/$node/node_modules/.bin:$PATH" buf generate --output target/buf-gen
grep -q "export const LeadScoring" target/buf-gen/gen/es/leadscore/v1/leadscore_pb.ts
command -v curl >/dev/null 2>&1 || { echo "curl is missing: apt-get install curl" >&2; exit 1; }

[ -x target/debug/leadscore ] || cargo build --locked
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# The clients' crash tests consume groups of their own and wait out a short
# visibility timeout.
LEADSCORE_TRIGGER_GROUPS='["automation","py-crash","node-crash"]' LEADSCORE_TRIGGER_VISIBILITY_TIMEOUT=1s \
  RUST_LOG=warn target/debug/leadscore serve --grpc-addr "127.0.0.1:$port" --metrics-addr off 2>target/client-check.log &
service=$!
trap 'kill $service 2>/dev/null; wait $service 2>/dev/null || true' EXIT
PYTHONPATH=clients/python/gen "$venv/bin/python" tests/clients/grpcio_errors.py "127.0.0.1:$port"
python3 tests/clients/connect_calls.py "$node/node_modules/.bin/buf" "127.0.0.1:$port"
"$venv/bin/python" tests/clients/python_clients.py "127.0.0.1:$port"
node tests/clients/node_clients.js "127.0.0.1:$port"
"$venv/bin/python" tests/clients/webhooks.py target/debug/leadscore
