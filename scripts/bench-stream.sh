#!/usr/bin/env bash
# Streaming benchmark (issue 3): consume-to-Redis throughput beside the broker's own
# read rate, and freshness (produce to view readable in Redis, p50/p99) with a producer
# at a fixed rate.
#   STREAM_EVENTS=1000000 FRESH_RATE=5000 FRESH_SECONDS=20 LATENESS=5s,60s ONLINE=provisional scripts/bench-stream.sh
#
# It runs its own tansu on BENCH_KAFKA_PORT (default 9093) over a scratch data
# directory, removed afterwards: tansu keeps its log in SQLite and slows down as that
# file grows, so a broker that has served the test suite for a while measured 1-3 s of
# its own produce-to-consume latency at rates where a fresh one measured 0.03-0.3 s.
# Set SKEWLESS_KAFKA to measure against a broker of your own instead.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/redis.sh
if [[ -z "${SKEWLESS_KAFKA:-}" ]]; then
  port="${BENCH_KAFKA_PORT:-9093}"
  data="$(mktemp -d "${TMPDIR:-/tmp}/skewless-bench-kafka.XXXXXX")"
  export SKEWLESS_KAFKA_PORT="$port" SKEWLESS_KAFKA_DATA="$data"
  trap 'scripts/kafka.sh stop; rm -rf "$data"' EXIT
  scripts/kafka.sh start
  export SKEWLESS_KAFKA="127.0.0.1:$port"
fi
cargo bench --bench stream
