#!/usr/bin/env bash
# Serves GET /livez in the foreground. Env: PORT (3000), HOST (127.0.0.1).
set -euo pipefail
cd "$(dirname "$0")"
exec "${BENCH_TARGET_DIR:-$PWD/target}/release/hyper-bare"
