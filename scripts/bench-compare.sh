#!/usr/bin/env bash
# Interleaved backfill runs of two builds, the way speed changes are judged here (this
# machine's speed swings by tens of percent hour to hour): the working tree's build and
# the build of REV run alternately on the 5M-event log of scripts/bench.sh, 2 workers,
# PAIRS times; then their views (every SQLite row, in user order), dead letters (less
# their wall-clock timestamps) and counts are compared by hash.
#
#   scripts/bench-compare.sh REV [PAIRS]      # e.g. scripts/bench-compare.sh main~3 3
#
# Stop the test broker first (scripts/kafka.sh stop): it takes a few percent of a core.
set -euo pipefail
cd "$(dirname "$0")/.."
rev="${1:?usage: scripts/bench-compare.sh REV [PAIRS]}"
pairs="${2:-3}"
work="${TMPDIR:-/tmp}/skewless-compare"
data="${BENCH_DIR:-$HOME/.cache/skewless/bench}/5m"
mkdir -p "$work"
[[ -x /usr/bin/time ]] || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }

cargo build --release --quiet
cp target/release/skewless "$work/skewless-new"
rm -rf "$work/tree"
git worktree add --force --detach "$work/tree" "$rev" >/dev/null
(cd "$work/tree" && CARGO_TARGET_DIR="$OLDPWD/target" cargo build --release --quiet)
cp target/release/skewless "$work/skewless-old"
git worktree remove --force "$work/tree"
cargo build --release --quiet  # put this tree's binary back
[[ -f "$data/.done" ]] || scripts/bench.sh --data --quick

for i in $(seq 1 "$pairs"); do
  for build in old new; do
    out="$work/$build"
    rm -rf "$out" && mkdir -p "$out"
    /usr/bin/time -v "$work/skewless-$build" run jobs/recsys-bench.toml --input "$data/*.jsonl.gz" \
      --workers 2 --no-progress --fresh --views-sqlite "$out/views.sqlite" --dlq "$out/dlq.jsonl" \
      --summary-json "$out/summary.json" --checkpoint-dir "$out/checkpoints" \
      >"$out/stdout.json" 2>"$out/time.txt"
    eps=$(python3 -c "import json,sys;print(round(json.load(open(sys.argv[1]))['events_per_s']))" "$out/stdout.json")
    rss=$(awk -F: '/Maximum resident/ {gsub(/ /,"",$2); print int($2/1024)}' "$out/time.txt")
    echo "pair $i $build: $eps events/s, peak RSS $rss MiB"
  done
done
for build in old new; do
  python3 - "$work/$build" "$build" <<'PY'
import hashlib, json, sqlite3, sys
out, build = sys.argv[1], sys.argv[2]
views = hashlib.sha256()
rows = 0
for row in sqlite3.connect(f"{out}/views.sqlite").execute(
        "SELECT user_id, as_of, features, state FROM user_features ORDER BY user_id"):
    views.update(repr(row).encode())
    rows += 1
letters = hashlib.sha256()
for line in sorted(open(f"{out}/dlq.jsonl")):
    letter = json.loads(line)
    for key in ("attempt_timestamps", "failure_timestamp"):
        letter.pop(key, None)
    letters.update(json.dumps(letter, sort_keys=True).encode())
summary = json.load(open(f"{out}/stdout.json"))
counts = {k: summary[k] for k in
          ("read", "applied", "duplicates", "ignored", "late", "late_dropped", "dlq", "users", "watermark")}
print(f"{build}: {rows} views {views.hexdigest()[:16]}, dead letters {letters.hexdigest()[:16]}, "
      f"counts {hashlib.sha256(json.dumps(counts, sort_keys=True).encode()).hexdigest()[:16]}")
PY
done
