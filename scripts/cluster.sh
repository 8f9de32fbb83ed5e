#!/usr/bin/env bash
# A local cluster of N skewless processes on loopback (timely's cluster mode), for
# tests and demos: one job, its partitions spread over every worker of every process.
#
#   scripts/cluster.sh N JOB [run flags...]
#   scripts/cluster.sh 2 jobs/recsys.toml --workers 2
#
# Writes a hostfile (127.0.0.1:PORT, PORT+1, ...), starts processes 1..N-1 in the
# background with their logs in $SKEWLESS_CLUSTER_LOGS (default a temporary
# directory, printed), runs process 0 in the foreground (it prints the summary and
# writes the views), then waits for the others. Exits non-zero when any process
# failed; Ctrl-C stops them all.
#
# Environment: SKEWLESS_BIN (default target/release/skewless, built when missing),
# SKEWLESS_CLUSTER_PORT (first port, default 2101), SKEWLESS_CLUSTER_LOGS.
set -euo pipefail
if [[ $# -lt 2 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
  sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
processes="$1"
shift
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${SKEWLESS_BIN:-$root/target/release/skewless}"
if [[ ! -x "$bin" ]]; then
  (cd "$root" && cargo build --release --quiet)
fi
port="${SKEWLESS_CLUSTER_PORT:-2101}"
logs="${SKEWLESS_CLUSTER_LOGS:-$(mktemp -d -t skewless-cluster.XXXXXX)}"
mkdir -p "$logs"
hostfile="$logs/hostfile"
: >"$hostfile"
for ((i = 0; i < processes; i++)); do
  echo "127.0.0.1:$((port + i))" >>"$hostfile"
done
echo "cluster.sh: $processes processes on 127.0.0.1:$port.., logs in $logs" >&2

pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap 'stop_all; exit 130' INT TERM

for ((i = 1; i < processes; i++)); do
  "$bin" run "$@" -n "$processes" -p "$i" -H "$hostfile" >"$logs/process-$i.out" 2>"$logs/process-$i.log" &
  pids+=("$!")
done
status=0
"$bin" run "$@" -n "$processes" -p 0 -H "$hostfile" 2> >(tee "$logs/process-0.log" >&2) || status=$?
# The others cannot finish without process 0.
if [[ $status -ne 0 ]]; then stop_all; fi
for ((i = 1; i <= ${#pids[@]}; i++)); do
  if ! wait "${pids[$((i - 1))]}"; then
    echo "cluster.sh: process $i failed; last lines of $logs/process-$i.log:" >&2
    tail -5 "$logs/process-$i.log" >&2
    status=1
  fi
done
exit "$status"
