#!/usr/bin/env bash
# The test command: starts what the tests need (Redis, and the Kafka-compatible broker
# tansu, built into ~/.cache/skewless the first time), then runs every test (unit,
# integration against the real broker and Redis, golden, property and doc tests).
# Run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."

# The layout first: an import cycle or an 800-line file fails fast.
scripts/check-layout.py

scripts/redis.sh
# An emptied broker: tansu keeps its log in SQLite and slows down as it grows (a
# streaming test that waits for 3 s of idleness read only part of its topic on a
# broker a few test runs old). Topics are per test run anyway.
scripts/kafka.sh reset
export SKEWLESS_KAFKA="${SKEWLESS_KAFKA:-127.0.0.1:9092}"
export SKEWLESS_REDIS="${SKEWLESS_REDIS:-redis://127.0.0.1:6379}"

# A real client of the training export: pyarrow, in a virtual environment cached
# beside tansu (installed from PyPI the first time).
venv="${SKEWLESS_CACHE:-$HOME/.cache/skewless}/venv"
if ! "$venv/bin/python" -c 'import pyarrow' >/dev/null 2>&1; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet 'pyarrow>=15'
fi
export SKEWLESS_PYTHON="$venv/bin/python"

# Tests write only into their own temporary directories: what the README's first
# command left under out/ must be as it was (a test that ran a job with its default
# sinks once emptied out/recsys/views.jsonl).
# A clean clone has no out/ at all (and find's failure would end this script under
# pipefail, silently: that was CI's red run of stop 24).
outputs() { if [[ -d out ]]; then find out -type f -printf '%p %s %T@\n' | sort; fi; }
before=$(outputs)

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --lib --bins --tests --no-fail-fast
else
  cargo test --lib --bins --tests --no-fail-fast
fi
cargo test --doc

if [[ "$(outputs)" != "$before" ]]; then
  echo "test.sh: the tests changed files under out/ (they must write only into temporary directories):" >&2
  diff <(echo "$before") <(outputs) >&2 || true
  exit 1
fi
