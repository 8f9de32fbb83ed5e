#!/usr/bin/env bash
# Backfill benchmark (issue 2): 5M events for 500k Zipf-skewed users in 4 gzip
# partitions, run with 1 and 2 workers; then 50M events for the same users to show how
# memory grows with events. Both logs spread events so that the 24 h dedup horizon
# holds the same number of events (about 500k): 5M over 10 days, 50M over 100 days.
#
# Prints events/s and peak RSS (/usr/bin/time -v). Data is cached in $BENCH_DIR.
#   scripts/bench.sh            # 5M (1 and 2 workers) and 50M (2 workers)
#   scripts/bench.sh --quick    # 5M only
#   scripts/bench.sh --data     # only generate the data (for the other benchmarks;
#                               # with --quick, only the 5M log)
#   BENCH_USERS=50000 scripts/bench.sh
#                               # fewer users: their state is near its bounds already
#                               # at 5M, so the 50M run shows what events alone cost
#   scripts/bench.sh --export   # the training export (issue 12): the 5M log with 2
#                               # workers, export off and on (Parquet) interleaved,
#                               # then the Parquet writer's floor (benches/export_write.rs);
#                               # rows/s written, Parquet and JSONL bytes per row
#   scripts/bench.sh --python   # skewless (2 workers) beside a plain Python fold of the
#                               # same features (scripts/reference_fold.py) on one 5M
#                               # log of 50k users, as 4 files and as 1, plain and zstd
#   scripts/bench.sh --replay   # the replay debugger (issue 14): on the 5M log with 2
#                               # workers, a backfill, `explain` of one user and `diff`
#                               # of the job against a copy with one decay weight
#                               # changed, interleaved; wall time, peak RSS, ratios
set -euo pipefail
cd "$(dirname "$0")/.."
USERS="${BENCH_USERS:-500000}"
default_dir="$HOME/.cache/skewless/bench"
[[ "$USERS" == 500000 ]] || default_dir+="-u$USERS"
BENCH_DIR="${BENCH_DIR:-$default_dir}"
RUNS="${RUNS:-3}"
quick=false
data_only=false
export_bench=false
replay_bench=false
python_bench=false
for arg in "$@"; do
  [[ "$arg" == "--python" ]] && { python_bench=true; quick=true; }
  [[ "$arg" == "--replay" ]] && { replay_bench=true; quick=true; }
  [[ "$arg" == "--quick" ]] && quick=true
  [[ "$arg" == "--data" ]] && data_only=true
  [[ "$arg" == "--export" ]] && { export_bench=true; quick=true; }
done

cargo build --release --quiet
bin=target/release/skewless
[[ -x /usr/bin/time ]] || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }

gen() { # name events span
  local dir="$BENCH_DIR/$1"
  # .done holds the user count and generator the data was made with (gen2: impressions
  # with served features and their outcomes).
  local made; made=$(cat "$dir/.done" 2>/dev/null || echo none)
  if [[ "$made" != "$USERS gen2" ]]; then
    rm -rf "$dir"
    echo "generating $2 events into $dir ..." >&2
    "$bin" gen --out "$dir" --events "$2" --users "$USERS" --zipf 1.0 --partitions 4 --span "$3" \
      --v1 0.2 --duplicates 0.005 --late 0.001 --malformed 0.001 --unknown 0.02 --seed 42
    echo "$USERS gen2" >"$dir/.done"
  fi
}

run() { # name workers [run flags...] -> "events/s peak_rss_mib wall_s"
  local best="" rss="" wall="" name=$1 workers=$2
  shift 2
  for _ in $(seq 1 "$RUNS"); do
    rm -rf out/bench
    /usr/bin/time -v "$bin" run jobs/recsys-bench.toml --input "$BENCH_DIR/$name/*.jsonl.gz" \
      --workers "$workers" --no-progress --fresh "${@:---no-export}" \
      >/tmp/skewless-bench.json 2>/tmp/skewless-bench.time
    local eps; eps=$(python3 -c 'import json;print(round(json.load(open("/tmp/skewless-bench.json"))["events_per_s"]))')
    local kb; kb=$(awk -F: '/Maximum resident/ {gsub(/ /,"",$2); print $2}' /tmp/skewless-bench.time)
    local w; w=$(python3 -c 'import json;print(round(json.load(open("/tmp/skewless-bench.json"))["wall_time_s"],2))')
    if [[ -z "$best" || "$eps" -gt "$best" ]]; then best=$eps; rss=$((kb / 1024)); wall=$w; fi
  done
  echo "$best $rss $wall"
}

gen 5m 5000000 10d
$quick || gen 50m 50000000 100d
$data_only && exit 0

if $python_bench; then
  # Issue 15's side-by-side: one sitting, the same files for both, 50k users.
  venv="${SKEWLESS_CACHE:-$HOME/.cache/skewless}/venv"
  [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
  "$venv/bin/python" -c 'import zstandard' 2>/dev/null || "$venv/bin/pip" install --quiet zstandard
  pydir="${BENCH_DIR%/}-python"
  for shape in 4-plain 1-plain 4-zst 1-zst; do
    dir="$pydir/$shape"
    [[ -f "$dir/.done" ]] && continue
    rm -rf "$dir"
    flag=--no-gzip
    [[ $shape == *zst ]] && flag=--zstd
    echo "generating $dir ..." >&2
    "$bin" gen --out "$dir" --events 5000000 --users 50000 --zipf 1.0 --partitions "${shape%%-*}" \
      --span 10d --v1 0.2 --duplicates 0.005 --late 0.001 --malformed 0.001 --unknown 0.02 \
      --seed 42 "$flag" >/dev/null
    touch "$dir/.done"
  done
  wall() { /usr/bin/time -f '%e %M' -o /tmp/skewless-bench.time "$@" >/dev/null 2>&1; tail -1 /tmp/skewless-bench.time; }
  printf '%-8s %12s %12s %12s %12s %8s\n' log skewless_s skewless_MiB python_s python_MiB ratio
  for _ in $(seq 1 "${RUNS_PY:-1}"); do
    for shape in 4-plain 1-plain 4-zst 1-zst; do
      rm -rf out/bench
      read -r s_wall s_kb < <(wall "$bin" run jobs/recsys-bench.toml --input "$pydir/$shape/part-*" \
        --workers 2 --no-progress --fresh --no-export)
      read -r p_wall p_kb < <(wall "$venv/bin/python" scripts/reference_fold.py "$pydir/$shape"/part-*)
      printf '%-8s %12s %12s %12s %12s %8s\n' "$shape" "$s_wall" $((s_kb / 1024)) "$p_wall" $((p_kb / 1024)) \
        "$(python3 -c "print(f'{$p_wall/$s_wall:.1f}x')")"
    done
  done
  exit 0
fi

if $replay_bench; then
  mkdir -p out/bench
  # The bench job with the view score's decay changed: what a diff should find.
  sed 's/decay = 0.95/decay = 0.9/' jobs/recsys.toml >out/bench/recsys-decay.toml
  sed 's/^extends = "recsys.toml"/extends = "recsys-decay.toml"/' jobs/recsys-bench.toml \
    >out/bench/recsys-bench-decay.toml
  inputs="$BENCH_DIR/5m/*.jsonl.gz"
  user="${BENCH_USER:-user-1234}"
  timed() { # label command... -> "label wall_s peak_rss_mib"
    local label=$1
    shift
    /usr/bin/time -f '%e %M' -o /tmp/skewless-bench.time "$@" >/dev/null 2>/tmp/skewless-bench.err || true
    read -r wall kb < <(tail -1 /tmp/skewless-bench.time)
    echo "$label $wall $((kb / 1024))"
  }
  printf '%-10s %8s %14s %8s\n' command wall_s peak_rss_MiB ratio
  for _ in $(seq 1 "$RUNS"); do
    rm -rf out/bench/views.sqlite out/bench/dlq.jsonl out/bench/summary.json
    read -r _ base rss < <(timed backfill "$bin" run jobs/recsys-bench.toml --input "$inputs" \
      --workers 2 --no-progress --fresh --no-export)
    printf '%-10s %8s %14s %8s\n' backfill "$base" "$rss" 1.00
    read -r _ wall rss < <(timed explain "$bin" explain jobs/recsys-bench.toml --user "$user" \
      --input "$inputs" --workers 2)
    printf '%-10s %8s %14s %8s\n' explain "$wall" "$rss" "$(python3 -c "print(f'{$wall/$base:.2f}')")"
    read -r _ wall rss < <(timed diff "$bin" diff jobs/recsys-bench.toml out/bench/recsys-bench-decay.toml \
      "$inputs" --workers 2)
    printf '%-10s %8s %14s %8s\n' diff "$wall" "$rss" "$(python3 -c "print(f'{$wall/$base:.2f}')")"
  done
  exit 0
fi

if $export_bench; then
  export_flags=(--export-dir out/bench/training --skew-report out/bench/skew.json --export-format parquet)
  printf '%-10s %8s %10s %14s %10s\n' export wall_s events/s peak_rss_MiB rows/s
  for round in $(seq 1 "$RUNS"); do
    for mode in off on; do
      if [[ $mode == off ]]; then flags=(--no-export); else flags=("${export_flags[@]}"); fi
      read -r eps rss wall < <(RUNS=1 run 5m 2 "${flags[@]}")
      rows=$(python3 -c 'import json;print(json.load(open("/tmp/skewless-bench.json")).get("training_rows",0))')
      printf '%-10s %8s %10s %14s %10s\n' "$mode" "$wall" "$eps" "$rss" "$(python3 -c "print(round($rows/$wall))")"
    done
  done
  parquet=$(du -sb out/bench/training | cut -f1)
  # The floor: the last run's rows written again by the export's Parquet writer alone.
  cargo bench --quiet --bench export_write -- out/bench/training
  # The JSONL form of the same rows, for its size (it is merged in memory: not timed).
  RUNS=1 run 5m 2 --export-dir out/bench/training --skew-report out/bench/skew.json \
    --export-format jsonl >/dev/null
  jsonl=$(stat -c %s out/bench/training.jsonl)
  python3 -c "r=$rows; print(f'{r} rows: Parquet {$parquet/r:.1f} B/row, JSONL {$jsonl/r:.1f} B/row ({$jsonl/$parquet:.1f}x)')"
  exit 0
fi

printf '%-8s %-8s %12s %10s %14s\n' events workers wall_s events/s peak_rss_MiB
for workers in 1 2; do
  read -r eps rss wall < <(run 5m "$workers")
  printf '%-8s %-8s %12s %10s %14s\n' 5M "$workers" "$wall" "$eps" "$rss"
  [[ $workers == 2 ]] && rss5=$rss
done
if ! $quick; then
  RUNS=1 read -r eps rss wall < <(RUNS=1 run 50m 2)
  printf '%-8s %-8s %12s %10s %14s\n' 50M 2 "$wall" "$eps" "$rss"
  python3 -c "print(f'RSS 50M / RSS 5M (2 workers): {$rss/$rss5:.2f}x')"
fi
