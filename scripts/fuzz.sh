#!/usr/bin/env bash
# The long fuzz run (stable Rust, proptest): fresh random rule files, rule
# expressions, signal batches and leads until time is up; any panic fails.
#   scripts/fuzz.sh [SECONDS]     (default 600)
set -euo pipefail
cd "$(dirname "$0")/.."
LEADSCORE_FUZZ_SECS="${1:-600}" cargo test --release --locked --test fuzz -- --ignored --nocapture fuzz_until_time_is_up
