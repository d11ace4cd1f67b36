#!/usr/bin/env bash
# Builds the release binary (dependencies from crates.io, as pinned in Cargo.lock).
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TARGET_DIR="${BENCH_TARGET_DIR:-$PWD/target}"
cargo build --release --locked
