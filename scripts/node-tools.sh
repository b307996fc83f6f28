#!/usr/bin/env bash
# The npm tools the checks use, pinned, under target/clients-node (once):
# buf (lint, generate, curl) and protoc-gen-es.
set -euo pipefail
cd "$(dirname "$0")/.."
node=target/clients-node
[ -x "$node/node_modules/.bin/protoc-gen-es" ] || npm install --silent --no-audit --no-fund --prefix "$node" \
  @bufbuild/buf@1.75.0 @bufbuild/protoc-gen-es@2.17.0 >/dev/null
