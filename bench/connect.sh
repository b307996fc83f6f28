#!/usr/bin/env bash
# What HTTP/JSON (Connect) costs against gRPC, for ScoreLead, side by side.
#
#   bench/connect.sh [REQUESTS] [ROUNDS]      # defaults: 20000 3
#   IN_FLIGHT=8 bench/connect.sh              # 8 calls at once per HTTP/2 connection
#
# Starts redis-server on a free port and the release service against it,
# records one lead's signals, then drives ScoreLead for that lead with
# h2load (Debian nghttp2-client; installed when missing), 16 connections
# with one call in flight on each (16 at once, whatever the protocol),
# in ROUNDS rounds of four runs each: gRPC over HTTP/2 (the reference),
# Connect JSON over HTTP/2, Connect JSON over HTTP/1.1 (what curl and most
# webhook senders use) and gRPC-Web over
# HTTP/1.1. Prints per run throughput and latency p50/p99 (from h2load's
# per-request log), then the medians over the rounds and each one's ratio
# to gRPC. Cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/anchor.sh
requests=${1:-20000}
rounds=${2:-3}
in_flight=${IN_FLIGHT:-1}
if ! command -v h2load >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get install -y -qq nghttp2-client >/dev/null
fi
own_redis
cargo build --release --locked --quiet --bin leadscore
./target/release/leadscore serve --redis-url "redis://127.0.0.1:$redis_port" \
  --grpc-addr "127.0.0.1:$grpc_port" --metrics-addr off >"$dir/service.log" 2>&1 &
service=$!
wait_for 30 ./target/release/leadscore health --addr "http://127.0.0.1:$grpc_port" || { cat "$dir/service.log" >&2; exit 1; }
url="http://127.0.0.1:$grpc_port/leadscore.v1.LeadScoring/ScoreLead"
now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
curl -fsS -o /dev/null -H 'Content-Type: application/json' --data '{"signals":[
  {"eventId":"b1","leadId":"bench-1","type":"demo_requested","occurredAt":"'"$now"'"},
  {"eventId":"b2","leadId":"bench-1","type":"page_view","occurredAt":"'"$now"'"}]}' \
  "http://127.0.0.1:$grpc_port/leadscore.v1.LeadScoring/RecordSignals"
printf '{"leadId":"bench-1"}' >"$dir/score.json"
# The lead is there: every run below scores it (h2load cannot see a gRPC
# status, so this is what keeps the gRPC run honest).
curl -fsS -o /dev/null -H 'Content-Type: application/json' --data @"$dir/score.json" "$url"
python3 -c '
import struct, sys
m = b"\x0a" + bytes([len(b"bench-1")]) + b"bench-1"
sys.stdout.buffer.write(b"\x00" + struct.pack(">I", len(m)) + m)' >"$dir/score.grpc"

run() { # NAME H2LOAD-ARGS...: one run; prints "NAME req/s p50_ms p99_ms"
  local name=$1
  shift
  local out
  out=$(h2load -n "$requests" -c 16 --log-file "$dir/$name.log" "$@" "$url" 2>&1)
  grep -q "0 failed, 0 errored" <<<"$out" || { echo "$name: $out" >&2; exit 1; }
  python3 - "$name" "$dir/$name.log" "$(grep -o 'finished in [0-9.]*[a-z]*, [0-9.]* req/s' <<<"$out")" <<'PY'
import sys
name, log, summary = sys.argv[1:4]
rate = float(summary.split(", ")[1].split()[0])
d = sorted(int(line.split()[2]) for line in open(log))
pick = lambda q: d[min(len(d) - 1, int(q * len(d)))] / 1000
print(f"{name} {rate:.0f} {pick(0.5):.3f} {pick(0.99):.3f}")
PY
}

for round in $(seq "$rounds"); do
  run grpc -m "$in_flight" -d "$dir/score.grpc" -H 'content-type: application/grpc' -H 'te: trailers'
  run connect-json-h2 -m "$in_flight" -d "$dir/score.json" -H 'content-type: application/json'
  run connect-json-h1 --h1 -d "$dir/score.json" -H 'content-type: application/json'
  run grpc-web-h1 --h1 -d "$dir/score.grpc" -H 'content-type: application/grpc-web+proto'
done | tee "$dir/runs" | sed 's/^/run: /'
python3 - "$dir/runs" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    name, rate, p50, p99 = line.split()
    runs.setdefault(name, []).append((float(rate), float(p50), float(p99)))
med = {n: [statistics.median(x[i] for x in r) for i in range(3)] for n, r in runs.items()}
g = med["grpc"]
print(f"{'ScoreLead over':<18}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'req/s vs gRPC':>15}{'p50 vs gRPC':>13}")
for n, (rate, p50, p99) in med.items():
    print(f"{n:<18}{rate:>9.0f}{p50:>9.3f}{p99:>9.3f}{rate / g[0]:>15.2f}{p50 / g[1]:>13.2f}")
PY
echo "medians of $rounds rounds of $requests calls, 16 connections, $in_flight call(s) in flight on each HTTP/2 one, 1 on each HTTP/1.1 one"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), redis $(redis-server --version | grep -o 'v=[0-9.]*')"
