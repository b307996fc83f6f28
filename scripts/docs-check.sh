#!/usr/bin/env bash
# The docs, tested (tests/docs/check.py): the shell examples of README.md and
# docs/*.md marked `<!-- docs-test: run -->` run in order, one bash per file,
# against a fresh service on free ports (the debug binary on the embedded
# store, or the services and Redis the file starts itself), and the outputs
# marked `<!-- docs-test: output -->` must still show what the doc says.
# Needs curl, redis-server and npm (the buf examples use the buf that
# scripts/node-tools.sh installs under target/).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v curl >/dev/null 2>&1 || { echo "curl is missing: apt-get install curl" >&2; exit 1; }
[ -x target/debug/leadscore ] || cargo build --locked
scripts/node-tools.sh
python3 tests/docs/check.py target/debug/leadscore README.md docs/*.md
