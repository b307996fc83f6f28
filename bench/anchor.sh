# Sourced by the benchmarks: the physical anchor they are measured against.
#
# minimal_update PORT PIPELINE CALLS prints "<calls/s> <Redis CPU µs per call>"
# for the least work a lead update needs, on the Redis at PORT: one script
# call doing HMGET of 3 fields, a little arithmetic, HSET of 3 fields and an
# XADD to a capped stream, driven by redis-benchmark with 50 clients over
# 10,000 keys, PIPELINE calls in flight per client.

wait_for() { # SECONDS COMMAND...: until COMMAND succeeds, or fail after SECONDS
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { echo "timed out waiting for: $*" >&2; return 1; }
    sleep 0.1
  done
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

redis_cpu() { # PORT: Redis CPU seconds so far (user + system)
  redis-cli -p "$1" info cpu | tr -d '\r' | awk -F: '/^used_cpu_(user|sys):/ {s += $2} END {printf "%.6f", s}'
}

minimal_update() {
  local port=$1 pipeline=$2 calls=$3
  local script='local v = redis.call("HMGET", KEYS[1], "n", "s", "t")
local n = (tonumber(v[1]) or 0) + 1
local s = (tonumber(v[2]) or 0) * 0.5 + tonumber(ARGV[1])
redis.call("HSET", KEYS[1], "n", n, "s", s, "t", ARGV[2])
redis.call("XADD", KEYS[2], "MAXLEN", "~", "10000", "*", "l", KEYS[1])
return n'
  local sha before rps after
  sha=$(redis-cli -p "$port" script load "$script")
  before=$(redis_cpu "$port")
  rps=$(redis-benchmark -p "$port" -c 50 -n "$calls" -P "$pipeline" -r 10000 --csv \
    evalsha "$sha" 2 "anchor:lead:__rand_int__" anchor:feed 10 1700000000000 | tail -1 | cut -d, -f2 | tr -d '"')
  after=$(redis_cpu "$port")
  [[ $rps =~ ^[0-9.]+$ ]] || { echo "redis-benchmark gave no rate for the minimal lead update" >&2; return 1; }
  redis-cli -p "$port" --scan --pattern 'anchor:*' | xargs -r redis-cli -p "$port" del >/dev/null
  echo "$rps $(python3 -c "print(round(($after - $before) * 1e6 / $calls, 2))")"
}
