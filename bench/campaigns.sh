#!/usr/bin/env bash
# What a campaign report costs over a large population.
#
#   bench/campaigns.sh [LEADS] [QUERIES]      # defaults: 1000000 100
#
# Starts redis-server on a free port and the release service against it,
# loads LEADS leads through RecordSignals (each with three signals from
# campaigns drawn from 100 over 10 sources and 5 channels, within the last
# 30 days) and 90 days of spend per campaign, prints what a lead record and
# its attribution journey take in Redis, then asks for the last 30 days'
# GetCampaignReport QUERIES times under each attribution model by campaign,
# by source and by channel (latency percentiles;
# examples/campaign_report.rs). Prints what the report reads from Redis per
# call, and what the credits take. Cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/anchor.sh
leads=${1:-1000000}
queries=${2:-100}
own_redis
cargo build --release --locked --quiet --bin leadscore --example cohort_profile --example campaign_report
./target/release/leadscore serve --redis-url "redis://127.0.0.1:$redis_port" \
  --grpc-addr "127.0.0.1:$grpc_port" --metrics-addr off >"$dir/service.log" 2>&1 &
service=$!
wait_for 30 ./target/release/leadscore health --addr "http://127.0.0.1:$grpc_port" || { cat "$dir/service.log" >&2; exit 1; }
./target/release/examples/campaign_report "http://127.0.0.1:$grpc_port" "$leads" 0 "redis://127.0.0.1:$redis_port" | grep -E '^(loaded|lead records)'
redis-cli -p "$redis_port" --scan --pattern '*:credit:*' | sed 's/^/MEMORY USAGE /' | redis-cli -p "$redis_port" | awk \
  '{ n++; b += $1 } END { printf "credit hashes: %d keys, %.1f MiB in all\n", n, b / 1048576 }'
redis-cli -p "$redis_port" info memory | tr -d '\r' | grep '^used_memory_human'
redis-cli -p "$redis_port" config resetstat >/dev/null
./target/release/examples/campaign_report "http://127.0.0.1:$grpc_port" 0 "$queries"
redis-cli -p "$redis_port" info commandstats | tr -d '\r' | python3 -c '
import sys
q = 15 * int(sys.argv[1])
for line in sys.stdin:
    if line.startswith("cmdstat_hgetall:"):
        f = dict(kv.split("=") for kv in line.split(":", 1)[1].split(","))
        calls, usec = int(f["calls"]) / q, float(f["usec"]) / q / 1000
        print("Redis per report: %.0f HGETALL, %.1f ms of Redis CPU" % (calls, usec))' "$queries"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), redis $(redis-server --version | grep -o 'v=[0-9.]*')"
