#!/usr/bin/env bash
# A large population on a Redis of its own: cohort profiles and a rescore.
#
#   bench/cohort.sh [LEADS] [QUERIES]      # defaults: 1000000 200
#
# Starts redis-server on a free port and the release service against it,
# measures the physical anchor (bench/anchor.sh, -P 16) on that Redis, loads
# LEADS leads created this month through RecordSignals, asks for this
# month's cohort profile QUERIES times (latency percentiles), rescores every
# lead (leads/s, and its ratio to the anchor), and prints the Redis memory
# used per lead. Cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/anchor.sh
leads=${1:-1000000}
queries=${2:-200}
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
until redis-cli -p "$redis_port" ping >/dev/null 2>&1; do sleep 0.1; done
cargo build --release --locked --quiet --bin leadscore --example cohort_profile
read -r anchor_rps anchor_us < <(minimal_update "$redis_port" 16 200000)
echo "minimal lead update, -P 16: $anchor_rps calls/s (Redis CPU $anchor_us µs/call)"
./target/release/leadscore serve --redis-url "redis://127.0.0.1:$redis_port" \
  --grpc-addr "127.0.0.1:$grpc_port" --metrics-addr off >"$dir/service.log" 2>&1 &
service=$!
until ./target/release/leadscore health --addr "http://127.0.0.1:$grpc_port" >/dev/null 2>&1; do sleep 0.1; done
before=$(redis-cli -p "$redis_port" info memory | awk -F: '/^used_memory:/ {print $2}' | tr -d '\r')
./target/release/examples/cohort_profile "http://127.0.0.1:$grpc_port" "$leads" "$queries" rescore | tee "$dir/out.txt"
after=$(redis-cli -p "$redis_port" info memory | awk -F: '/^used_memory:/ {print $2}' | tr -d '\r')
rate=$(sed -n 's/^Rescore of .* (\([0-9]*\) leads\/s).*/\1/p' "$dir/out.txt")
[ -n "$rate" ] && echo "rescore: $(python3 -c "print(round($rate / $anchor_rps, 2))")× the minimal lead update's -P 16 rate"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), redis $(redis-server --version | grep -o 'v=[0-9.]*')"
if (( leads > 0 )); then
  echo "Redis memory: $(( (after - before) / leads )) bytes per lead (one signal each: lead, indexes, aggregates)"
fi
