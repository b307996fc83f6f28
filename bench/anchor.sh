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

# own_redis: a redis-server of the benchmark's own on a free port
# ($redis_port), a free port for the service ($grpc_port) and a scratch
# directory ($dir); on exit the service ($service, once set) and Redis stop
# and the directory goes.
own_redis() {
  redis_port=$(free_port)
  grpc_port=$(free_port)
  dir=$(mktemp -d)
  trap 'if [[ -n "${service:-}" ]]; then kill "$service" 2>/dev/null || true; fi
    redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
    rm -rf "$dir"' EXIT
  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" --daemonize yes >/dev/null
  wait_for 10 redis-cli -p "$redis_port" ping
}

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
