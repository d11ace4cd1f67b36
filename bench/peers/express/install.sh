#!/usr/bin/env bash
# Installs the exact dependency tree of package-lock.json from the npm registry.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --omit=dev --no-audit --no-fund
