#!/usr/bin/env bash
# How long `leadscore migrate` keeps the service down: converts a population
# of format-1 leads (copies of the format-1 fixture's leads, under new ids)
# and reports leads/s against the physical anchor's pipelined rate measured
# on the same Redis in the same run (bench/anchor.sh).
#
#   bench/migrate.sh [LEADS]      (default 200000)
#
# Starts its own redis-server on a free port; needs the release build
# (built here if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

leads="${1:-200000}"
partitions=256
source bench/anchor.sh

cargo build --release --locked --quiet --bin leadscore --example cohort_profile
bin=target/release/leadscore

own_redis
redis="redis-cli -p $redis_port"

read -r anchor_rps anchor_cpu < <(minimal_update "$redis_port" 16 1000000)

echo "writing $leads format-1 leads" >&2
python3 bench/format1_population.py "$leads" "$partitions" | $redis --pipe >/dev/null
before=$($redis info memory | tr -d '\r' | awk -F: '/^used_memory:/ {print $2}')

config="$dir/migrate.toml"
printf 'redis_key_prefix = "ls"\nredis_partitions = %d\n' "$partitions" >"$config"
redis_before=$(redis_cpu "$redis_port")
started=$(date +%s.%N)
# The command's own CPU seconds (user + system), from its rusage.
own=$(python3 -c '
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, stdout=sys.stderr)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(r.ru_utime + r.ru_stime)' "$bin" migrate --config "$config" --redis-url "redis://127.0.0.1:$redis_port")
finished=$(date +%s.%N)
redis_after=$(redis_cpu "$redis_port")
after=$($redis info memory | tr -d '\r' | awk -F: '/^used_memory:/ {print $2}')

python3 - "$leads" "$started" "$finished" "$anchor_rps" "$before" "$after" "$own" "$redis_before" "$redis_after" <<'EOF'
import sys
leads, started, finished, anchor, before, after, own, rb, ra = (float(x) for x in sys.argv[1:])
secs = finished - started
rate = leads / secs
print(f"migrate: {int(leads):,} leads in {secs:.1f} s = {rate:,.0f} leads/s "
      f"= {rate / anchor:.2f}x the anchor's -P 16 rate ({anchor:,.0f}/s); "
      f"CPU: migrate {own:.1f} s, Redis {ra - rb:.1f} s; "
      f"Redis memory {before / 2**20:,.0f} MiB -> {after / 2**20:,.0f} MiB")
EOF
