#!/usr/bin/env bash
# The test command: starts what the tests need, then runs every test (unit,
# integration, golden, property and doc tests). Run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/redis.sh

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --all-targets --no-fail-fast
else
  cargo test --all-targets --no-fail-fast
fi
cargo test --doc
