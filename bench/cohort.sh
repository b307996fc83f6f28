#!/usr/bin/env bash
# A large population on a Redis of its own: cohort profiles and a rescore.
#
#   bench/cohort.sh [LEADS] [QUERIES]      # defaults: 1000000 200
#
# Starts redis-server on a free port and the release service against it
# (with a copy of the default rules), measures the physical anchor
# (bench/anchor.sh, -P 16) on that Redis, loads LEADS leads created this
# month through RecordSignals, asks for this month's cohort profile QUERIES
# times (latency percentiles), prints the Redis memory used per lead, then
# activates a rule set with other half-lives (a reload: every lead's score
# changes, so the rescore it starts rewrites every lead) and follows that
# rescore to its end (leads/s, and its ratio to the anchor). Cleans up after
# itself.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/anchor.sh
leads=${1:-1000000}
queries=${2:-200}
own_redis
cargo build --release --locked --quiet --bin leadscore --example cohort_profile
anchor=$(minimal_update "$redis_port" 16 200000)
read -r anchor_rps anchor_us <<<"$anchor"
echo "minimal lead update, -P 16: $anchor_rps calls/s (Redis CPU $anchor_us µs/call)"
cp rules/default.toml "$dir/rules.toml"
./target/release/leadscore serve --redis-url "redis://127.0.0.1:$redis_port" --rules "$dir/rules.toml" \
  --grpc-addr "127.0.0.1:$grpc_port" --metrics-addr off >"$dir/service.log" 2>&1 &
service=$!
wait_for 30 ./target/release/leadscore health --addr "http://127.0.0.1:$grpc_port" || { cat "$dir/service.log" >&2; exit 1; }
used_memory() { redis-cli -p "$redis_port" info memory | awk -F: '/^used_memory:/ {print $2}' | tr -d '\r'; }
before=$(used_memory)
./target/release/examples/cohort_profile "http://127.0.0.1:$grpc_port" "$leads" "$queries"
after=$(used_memory)
if ((leads > 0)); then
  echo "Redis memory: $(((after - before) / leads)) bytes per lead (one signal each: record, indexes, aggregates)"
fi
# Other half-lives: every decaying score changes, so every lead is rewritten.
sed -e 's/^version = "\(.*\)"/version = "\1-bench"/' -e 's/half_life = "30d"/half_life = "20d"/' \
  -e 's/half_life = "14d"/half_life = "10d"/' -e 's/half_life = "45d"/half_life = "30d"/' \
  rules/default.toml >"$dir/rules.toml"
kill -HUP "$service"
wait_for 30 grep -q "rule set reloaded" "$dir/service.log" || { cat "$dir/service.log" >&2; exit 1; }
./target/release/examples/cohort_profile "http://127.0.0.1:$grpc_port" 0 0 rescore | tee "$dir/out.txt"
rate=$(sed -n 's/^Rescore of .* (\([0-9]*\) leads\/s).*/\1/p' "$dir/out.txt")
[ -n "$rate" ] && echo "rescore: $(python3 -c "print(round($rate / $anchor_rps, 2))")× the minimal lead update's -P 16 rate"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), redis $(redis-server --version | grep -o 'v=[0-9.]*')"
