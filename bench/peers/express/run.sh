#!/usr/bin/env bash
# Serves in the foreground. Env: PORT (3000), HOST (127.0.0.1), DATABASE_URL, STATIC_DIR,
# WORKERS (1 = one process; more = that many cluster workers), DB_POOL_MAX (16 / WORKERS).
set -euo pipefail
cd "$(dirname "$0")"
export NODE_ENV=production
exec node server.js
