#!/usr/bin/env bash
# Webhook delivery latency from a stage change to the receiver, p50 and p99,
# against the ceiling measured in the same run (the same receiver sent a
# signed POST directly over a kept-alive connection).
#
#   bench/webhooks.sh [ROUNDS [LEADS_PER_ROUND]]     # defaults: 3 300
#
# Builds the release binary, then bench/webhook_latency.py starts its own
# redis-server, the service with one endpoint and the Python receiver
# example (standardwebhooks, in the clients' virtualenv under target/), and
# makes leads MQLs one at a time. Cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/clients-venv
scripts/venv.sh "$venv" -r clients/python/requirements.txt
cargo build --release --locked --quiet --bin leadscore
"$venv/bin/python" bench/webhook_latency.py target/release/leadscore "${1:-3}" "${2:-300}"
