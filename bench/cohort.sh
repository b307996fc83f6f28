#!/usr/bin/env bash
# GetCohortScoreProfile over a large cohort, on a Redis of its own.
#
#   bench/cohort.sh [LEADS] [QUERIES]      # defaults: 1000000 50
#
# Starts redis-server on a free port and the release service against it,
# loads LEADS leads created this month through RecordSignals, asks for this
# month's cohort profile QUERIES times, prints the latencies and the Redis
# memory used per lead. Cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
leads=${1:-1000000}
queries=${2:-50}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
redis_port=$(free_port)
grpc_port=$(free_port)
dir=$(mktemp -d)
cleanup() {
  [[ -n "${service:-}" ]] && kill "$service" 2>/dev/null || true
  redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT
redis-server --port "$redis_port" --save '' --appendonly no --dir "$dir" --daemonize yes >/dev/null
cargo build --release --quiet --bin leadscore --example cohort_profile
./target/release/leadscore serve --redis-url "redis://127.0.0.1:$redis_port" \
  --grpc-addr "127.0.0.1:$grpc_port" --metrics-addr off >"$dir/service.log" 2>&1 &
service=$!
for _ in $(seq 50); do
  (echo >"/dev/tcp/127.0.0.1/$grpc_port") 2>/dev/null && break
  sleep 0.1
done
before=$(redis-cli -p "$redis_port" info memory | awk -F: '/^used_memory:/ {print $2}' | tr -d '\r')
./target/release/examples/cohort_profile "http://127.0.0.1:$grpc_port" "$leads" "$queries"
after=$(redis-cli -p "$redis_port" info memory | awk -F: '/^used_memory:/ {print $2}' | tr -d '\r')
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), redis $(redis-server --version | grep -o 'v=[0-9.]*')"
if (( leads > 0 )); then
  echo "Redis memory: $(( (after - before) / leads )) bytes per lead (one signal each: lead, history, aggregates)"
fi
