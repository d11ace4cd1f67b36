#!/usr/bin/env bash
# Serves in the foreground. Env: PORT (3000), HOST (127.0.0.1), DATABASE_URL, STATIC_DIR,
# WORKERS (uvicorn worker processes, 1), DB_POOL_MAX (asyncpg pool per process, 16 / WORKERS).
set -euo pipefail
cd "$(dirname "$0")"
export WORKERS=${WORKERS:-1}
exec .venv/bin/uvicorn app:app --host "${HOST:-127.0.0.1}" --port "${PORT:-3000}" \
  --workers "$WORKERS" --loop uvloop --http httptools --no-access-log
