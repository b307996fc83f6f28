#!/usr/bin/env bash
# The throughput benchmark, in one run on one machine, with its ceilings:
#
#   bench/run.sh [SECONDS]        (default 10 s per measurement)
#
# Starts its own redis-server and the release service on free ports, then
# measures:
#   - the physical anchor: a minimal one-round-trip lead update (a script
#     doing HMGET of 3 fields, a little arithmetic, HSET of 3 fields and an
#     XADD to a capped stream) driven by redis-benchmark, 50 clients,
#     unpipelined and -P 16, with its Redis CPU per call (INFO cpu);
# and, each with `leadscore bench` (HDR histograms, 2 s warm-up):
#   - the service's own Redis path (read, scoring core, apply script) sent
#     without gRPC: a figure, not a ceiling;
#   - the no-op RPC ceiling: the health Check on the same server;
#   - single-signal RecordSignals (closed loop, 50 callers), its Redis
#     commands per call (INFO commandstats) and Redis CPU per call (INFO cpu);
#   - the same open loop at 50% of that maximum (p99);
#   - RecordSignals of 500 signals over 10,000 leads;
#   - ScoreLead and an 80/20 mix;
#   - overload: 2x the maximum offered open loop to a service with
#     max_in_flight = 64 (goodput, refusals);
#   - Redis memory of a lead with 20 signals (MEMORY USAGE over its keys);
# and prints every figure with its ratio to the ceilings. Each run's JSON
# lines stay in target/bench/results-<time>.jsonl; bench/table.py over
# several of them prints the median of every figure.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-10}"
concurrency=50
out=target/bench
mkdir -p "$out"
: > "$out/results.jsonl"

source bench/anchor.sh

# The same build as bench/cohort.sh (examples bring the dev-dependencies' features), so
# running both builds once.
cargo build --release --locked --quiet --bin leadscore --example cohort_profile
bin=target/release/leadscore

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
  --pidfile "$PWD/$out/redis.pid" --logfile "$PWD/$out/redis.log"
redis="redis-cli -p $redis_port"
service_pid=""
cleanup() {
  [ -n "$service_pid" ] && kill "$service_pid" 2>/dev/null && wait "$service_pid" 2>/dev/null
  $redis shutdown nosave >/dev/null 2>&1 || true
}
trap cleanup EXIT
wait_for 10 $redis ping

start_service() { # extra environment, e.g. LEADSCORE_MAX_IN_FLIGHT=64
  [ -n "$service_pid" ] && kill "$service_pid" && wait "$service_pid" 2>/dev/null || true
  grpc_port=$(free_port)
  env "$@" LEADSCORE_LOG_FORMAT=json RUST_LOG=warn "$bin" serve --grpc-addr "127.0.0.1:$grpc_port" \
    --metrics-addr off --redis-url "redis://127.0.0.1:$redis_port" >"$out/service.log" 2>&1 &
  service_pid=$!
  wait_for 30 "$bin" health --addr "http://127.0.0.1:$grpc_port" || { cat "$out/service.log" >&2; exit 1; }
}

fresh_redis() { # empty, recorded as this build's layout
  $redis flushall >/dev/null
  $redis set ls:format 2 >/dev/null
}

bench() { # name, then leadscore bench arguments
  local name=$1
  shift
  fresh_redis
  local line
  line=$("$bin" bench --addr "http://127.0.0.1:$grpc_port" --duration "$secs" --json --keep "$@")
  echo "{\"name\":\"$name\",\"report\":$line}" >>"$out/results.jsonl"
  python3 -c 'import json, sys; r = json.loads(sys.argv[2]); print("  %s: %.0f calls/s, p99 %.2f ms" % (sys.argv[1], r["calls_per_s"], r["ok_latency"]["p99"] / 1000))' "$name" "$line" >&2
}

echo "Redis $($redis info server | sed -n 's/^redis_version:\(.*\)\r$/\1/p'), $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB" >&2
start_service

echo "ceilings" >&2
# The physical anchor: what Redis does for the least work a lead update needs.
for pipeline in 1 16; do
  fresh_redis
  anchor=$(minimal_update "$redis_port" "$pipeline" $((secs * 20000)))
  read -r rps us <<<"$anchor"
  echo "  minimal_update_p$pipeline: $rps calls/s, Redis CPU $us us/call" >&2
  echo "{\"name\":\"minimal_update_p$pipeline\",\"report\":{\"calls_per_s\":$rps,\"redis_cpu_us\":$us}}" >>"$out/results.jsonl"
done
bench store_path --scenario store-ingest --redis-url "redis://127.0.0.1:$redis_port" --concurrency $concurrency
bench noop_ceiling --scenario noop --concurrency $concurrency

echo "scenarios" >&2
fresh_redis
$redis config resetstat >/dev/null
cpu_before=$(redis_cpu "$redis_port")
bench_keep() { # like bench, without emptying Redis first
  local name=$1
  shift
  local line
  line=$("$bin" bench --addr "http://127.0.0.1:$grpc_port" --duration "$secs" --json --keep "$@")
  echo "{\"name\":\"$name\",\"report\":$line}" >>"$out/results.jsonl"
  python3 -c 'import json, sys; r = json.loads(sys.argv[2]); print("  %s: %.0f calls/s, p99 %.2f ms" % (sys.argv[1], r["calls_per_s"], r["ok_latency"]["p99"] / 1000))' "$name" "$line" >&2
  echo "$line"
}
record_line=$(bench_keep record --scenario record --concurrency $concurrency)
cpu_after=$(redis_cpu "$redis_port")
python3 -c '
import json, sys
r = json.loads(sys.argv[1])
print(json.dumps({"name": "record_redis_cpu", "report": {"seconds": float(sys.argv[3]) - float(sys.argv[2])}}))' \
  "$record_line" "$cpu_before" "$cpu_after" >>"$out/results.jsonl"
$redis info commandstats | tr -d '\r' | python3 -c '
import json, sys
calls, evalsha = 0, 0
for line in sys.stdin:
    if line.startswith("cmdstat_") and not line.startswith(("cmdstat_ping", "cmdstat_info", "cmdstat_config", "cmdstat_flushall")):
        n = int(line.split("calls=")[1].split(",")[0])
        calls += n
        if line.startswith("cmdstat_evalsha:"):
            evalsha = n
print(json.dumps({"name": "redis_commands", "report": {"commands": calls, "evalsha": evalsha}}))' >>"$out/results.jsonl"
max=$(python3 -c 'import json; rs=[json.loads(l) for l in open("'"$out"'/results.jsonl")]; print(next(r["report"]["calls_per_s"] for r in rs if r["name"]=="record"))')
half=$(python3 -c "print(round($max / 2))")
bench record_open_half --scenario record --concurrency 200 --rate "$half"
bench record_batch --scenario record-batch --batch 500 --leads 10000 --concurrency 4
bench score --scenario score --concurrency $concurrency --leads 10000
bench mixed --scenario mixed --concurrency $concurrency --leads 10000

echo "overload" >&2
start_service LEADSCORE_MAX_IN_FLIGHT=64
rss_before=$(ps -o rss= -p "$service_pid")
bench overload_2x --scenario record --concurrency 400 --rate "$(python3 -c "print(round($max * 2))")"
rss_after=$(ps -o rss= -p "$service_pid")
echo "{\"name\":\"overload_rss\",\"report\":{\"before_kib\":$rss_before,\"after_kib\":$rss_after}}" >>"$out/results.jsonl"

echo "memory" >&2
fresh_redis
"$bin" bench --addr "http://127.0.0.1:$grpc_port" --scenario record --leads 1 --calls 20 --concurrency 1 --warmup 0 --json --keep >/dev/null
bytes=0
for key in $($redis --scan --pattern '*:lead:bench-0*'); do
  bytes=$((bytes + $($redis memory usage "$key" samples 0)))
done
echo "{\"name\":\"memory_20_signals\",\"report\":{\"bytes\":$bytes}}" >>"$out/results.jsonl"

cp "$out/results.jsonl" "$out/results-$(date +%Y%m%d-%H%M%S).jsonl"
python3 bench/table.py "$out/results.jsonl"
echo "(medians over the runs kept: python3 bench/table.py $out/results-*.jsonl)" >&2
