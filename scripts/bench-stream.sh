#!/usr/bin/env bash
# Streaming benchmark (issue 3): consume-to-Redis throughput beside the broker's own
# read rate, and freshness (produce to view readable in Redis, p50/p99) with a producer
# at a fixed rate. Starts the local broker and Redis first.
#   STREAM_EVENTS=1000000 FRESH_RATE=20000 FRESH_SECONDS=20 scripts/bench-stream.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/redis.sh
scripts/kafka.sh start
cargo bench --bench stream
