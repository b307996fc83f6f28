#!/usr/bin/env bash
# A bounded soak (not in CI): single-signal RecordSignals, open loop at a
# fixed rate, for MINUTES one-minute rounds over a growing population; after
# each round it prints the service's RSS, open file descriptors and the
# round's p99, and at the end whether RSS drifted more than 10% (from the
# end of round 1), descriptors grew, or p99 more than doubled.
#
#   bench/soak.sh [MINUTES] [RATE]      (default 10 minutes at 2500/s, about
#                                        50% of the maximum measured by
#                                        bench/run.sh on a 2-core machine)
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-10}"
rate="${2:-2500}"
out=target/bench
mkdir -p "$out"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cargo build --release --locked --quiet
bin=target/release/leadscore
redis_port=$(free_port)
grpc_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
  --pidfile "$PWD/$out/soak-redis.pid" --logfile "$PWD/$out/soak-redis.log"
redis="redis-cli -p $redis_port"
until $redis ping >/dev/null 2>&1; do sleep 0.1; done
RUST_LOG=warn "$bin" serve --grpc-addr "127.0.0.1:$grpc_port" --metrics-addr off \
  --redis-url "redis://127.0.0.1:$redis_port" >"$out/soak-service.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; $redis shutdown nosave >/dev/null 2>&1 || true' EXIT
until "$bin" health --addr "http://127.0.0.1:$grpc_port" >/dev/null 2>&1; do sleep 0.1; done

: >"$out/soak.jsonl"
printf "%-6s %10s %6s %10s %12s\n" round rss_mib fds p99_ms redis_mib
for round in $(seq 1 "$minutes"); do
  line=$("$bin" bench --addr "http://127.0.0.1:$grpc_port" --scenario record --rate "$rate" --concurrency 200 \
    --leads 100000 --duration 60 --warmup 0 --json)
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
  fds=$(ls "/proc/$pid/fd" | wc -l)
  redis_mem=$($redis info memory | tr -d '\r' | awk -F: '/^used_memory:/ {print $2}')
  echo "{\"round\":$round,\"rss_kib\":$rss,\"fds\":$fds,\"redis_bytes\":$redis_mem,\"report\":$line}" >>"$out/soak.jsonl"
  python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print("%-6s %10.1f %6s %10.2f %12.1f" % (r["round"], r["rss_kib"]/1024, r["fds"], r["report"]["ok_latency"]["p99"]/1000, r["redis_bytes"]/2**20))' \
    "$(tail -1 "$out/soak.jsonl")"
done
python3 - "$out/soak.jsonl" <<'EOF'
import json, sys
rounds = [json.loads(l) for l in open(sys.argv[1])]
first, last = rounds[0], rounds[-1]
drift = (last["rss_kib"] - first["rss_kib"]) / first["rss_kib"]
p99s = [r["report"]["ok_latency"]["p99"] for r in rounds]
errors = sum(sum(r["report"]["errors"].values()) for r in rounds)
print(f"RSS drift after round 1: {drift:+.1%} (limit 10%); descriptors {first['fds']} -> {last['fds']}; "
      f"p99 {min(p99s)/1000:.2f}-{max(p99s)/1000:.2f} ms; errors {errors}")
ok = drift < 0.10 and last["fds"] <= first["fds"] + 2 and max(p99s) <= 2 * min(p99s) and errors == 0
print("soak: " + ("passed" if ok else "FAILED"))
sys.exit(0 if ok else 1)
EOF
