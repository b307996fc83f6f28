#!/usr/bin/env bash
# Runs the whole test suite (unit, property, contract and integration tests).
# The integration tests spawn their own redis-server on free ports; when it is
# missing, this installs it (Debian/Ubuntu, as root or with sudo).
# Extra arguments go to `cargo test`, e.g. scripts/test.sh --locked.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
      command -v sudo >/dev/null 2>&1 || { echo "redis-server is missing; install it (apt-get install redis-server) or run as root" >&2; exit 1; }
      sudo="sudo"
    fi
    echo "redis-server is missing: installing it with apt-get" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
  else
    echo "redis-server is missing and apt-get is not available: install Redis 7 and put redis-server on PATH" >&2
    exit 1
  fi
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test "$@" 2>&1 | tee "$log" || status=$?
# One closing line for the whole run: the sum over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
