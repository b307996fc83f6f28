#!/usr/bin/env bash
# Prints every key of a Redis whose name or content contains one of the
# texts given, and "nothing found" (exit 0) when none does; exit 1 when
# something was found. Reads each key by its type (strings, hashes, lists,
# sets, sorted sets, streams), so nothing is missed in compressed dumps.
#   scripts/find-in-redis.sh redis://127.0.0.1:6390 demo-42-00007 'ada@example.com'
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 REDIS_URL TEXT..." >&2
  exit 2
fi
url=$1
shift
cli() { redis-cli -u "$url" --raw "$@"; }
found=0
keys=0
while IFS= read -r key; do
  [ -n "$key" ] || continue
  keys=$((keys + 1))
  case "$(cli TYPE "$key")" in
    string) content=$(cli GET "$key" | tr -d '\0') ;;
    hash) content=$(cli HGETALL "$key" | tr -d '\0') ;;
    list) content=$(cli LRANGE "$key" 0 -1 | tr -d '\0') ;;
    set) content=$(cli SMEMBERS "$key" | tr -d '\0') ;;
    zset) content=$(cli ZRANGE "$key" 0 -1 | tr -d '\0') ;;
    stream) content=$(cli XRANGE "$key" - + | tr -d '\0') ;;
    *) content="" ;;
  esac
  for text in "$@"; do
    if [[ "$key" == *"$text"* || "$content" == *"$text"* ]]; then
      echo "'$text' in $key"
      found=1
    fi
  done
done < <(cli --scan)
if [ "$found" -eq 0 ]; then
  echo "nothing found in $keys keys"
else
  exit 1
fi
