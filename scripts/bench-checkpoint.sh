#!/usr/bin/env bash
# Checkpoint and cluster benchmark (issue 4), over the backfill benchmark's data
# (500k Zipf-skewed users, scripts/bench.sh --data):
#
#  1. size and time of a checkpoint: the 5M log with 2 workers and a checkpoint every
#     second, killed after its 3rd; for each checkpoint, users, bytes, the slowest
#     part's write time (serialize, fsync, rename) and request-to-complete time, and
#     both per million users;
#  2. recovery: that run resumed; time to load the checkpoint (read, verify,
#     deserialize), to install the state in the workers, and the whole resumed run;
#  3. the throughput cost of checkpoints at the default interval (30 s): the 50M log
#     with 2 workers, checkpoints off and on (best of $RUNS);
#  4. processes: the 5M log on 1 process x 1 worker, 1 x 2, 2 x 1 (scripts/cluster.sh),
#     and, where more cores are lent, $PROCESSES processes x $WORKERS workers.
#
#   scripts/bench-checkpoint.sh            # all four
#   scripts/bench-checkpoint.sh --quick    # 1, 2 and 4 (no 50M run)
#   scripts/bench-checkpoint.sh --cost     # 3 only
#   BIN=path/to/skewless PROCESSES="1 2 4" WORKERS=4 scripts/bench-checkpoint.sh --scaling
set -euo pipefail
cd "$(dirname "$0")/.."
export BENCH_DIR="${BENCH_DIR:-$HOME/.cache/skewless/bench}"
export RUNS="${RUNS:-2}"
mode="${1:-all}"
if [[ -z "${BIN:-}" ]]; then
  cargo build --release --quiet
  BIN=target/release/skewless
fi
export BIN
if [[ "$mode" == "--scaling" || "$mode" == "--quick" ]]; then
  [[ -f "$BENCH_DIR/5m/.done" ]] || scripts/bench.sh --data --quick
else
  scripts/bench.sh --data
fi

exec python3 - "$mode" <<'PY'
import glob, json, os, re, resource, shutil, signal, subprocess, sys, time

mode = sys.argv[1]
BIN, DATA, RUNS = os.environ["BIN"], os.environ["BENCH_DIR"], int(os.environ["RUNS"])
OUT = "out/bench-checkpoint"
JOB = "jobs/recsys-bench.toml"

def inputs(name):
    return ["--input", f"{DATA}/{name}/*.jsonl.gz"]

def run_args(name, workers, checkpoints, interval="30s"):
    return [BIN, "run", JOB, *inputs(name), "--workers", str(workers), "--no-progress", "--fresh",
            "--views-sqlite", f"{OUT}/views.sqlite", "--dlq", f"{OUT}/dlq.jsonl",
            "--summary-json", f"{OUT}/summary.json",
            "--checkpoint-dir", checkpoints, "--checkpoint-interval", interval]

def fields(line):
    return dict(re.findall(r"(\w+)=([^\s]+)", re.sub(r"\x1b\[[0-9;]*m", "", line)))

def newest(ck):
    """The newest complete epoch (older ones are pruned)."""
    done = glob.glob(f"{ck}/ckpt-*/MANIFEST.json")
    return max((int(p.split("ckpt-")[1].split("/")[0]) for p in done), default=0)

def per_million(x, users):
    return x * 1e6 / users if users else float("nan")

def size_and_recovery():
    ck = f"{OUT}/checkpoints"
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    env = dict(os.environ, RUST_LOG="skewless=debug")
    with open(f"{OUT}/first.log", "w") as log:
        job = subprocess.Popen(run_args("5m", 2, ck, "1s"), stdout=subprocess.DEVNULL, stderr=log, env=env)
        while newest(ck) < 3 and job.poll() is None:
            time.sleep(0.01)
        job.send_signal(signal.SIGKILL)
        job.wait()
    if newest(ck) < 3:
        sys.exit("the 5M run ended before its 3rd checkpoint")
    parts = {}
    for line in open(f"{OUT}/first.log"):
        if "checkpoint part written" in line:
            f = fields(line)
            epoch = int(f["epoch"])
            parts[epoch] = max(parts.get(epoch, 0.0), float(f["seconds"]))
    print("1. checkpoints of the 5M log, 2 workers (every 1 s, killed after the 3rd)")
    print(f"{'epoch':>6} {'users':>9} {'MB':>8} {'write_s':>8} {'took_s':>7} {'MB/M users':>11} {'write_s/M users':>16}")
    listing = json.loads(subprocess.check_output([BIN, "checkpoint", "list", ck, "--json"]))
    for entry in reversed(listing):
        m = entry["manifest"]
        if entry["status"] != "complete":
            continue
        users = sum(p["users"] for p in m["parts"])
        mb = sum(p["bytes"] for p in m["parts"]) / 1e6
        write = parts.get(m["epoch"], float("nan"))
        print(f"{m['epoch']:>6} {users:>9} {mb:>8.1f} {write:>8.3f} {m['took_s']:>7.3f} "
              f"{per_million(mb, users):>11.1f} {per_million(write, users):>16.3f}")

    # Resume: the same run without --fresh.
    args = [a for a in run_args("5m", 2, ck, "30s") if a != "--fresh"]
    started = time.time()
    with open(f"{OUT}/resume.log", "w") as log:
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=log, env=env)
    wall = time.time() - started
    load = users = 0
    install = 0.0
    for line in open(f"{OUT}/resume.log"):
        f = fields(line)
        if "resuming from a checkpoint" in line:
            load, users = float(f["load_seconds"]), int(f["users"])
        if "state restored" in line:
            install = max(install, float(f["seconds"]))
    print(f"\n2. recovery of {users} users: load {load:.2f} s, install {install:.2f} s, "
          f"ready after {load + install:.2f} s; the resumed run took {wall:.1f} s in all")

def one_run(args, env=None):
    """The summary of one run, with the CPU seconds (user + system) it used."""
    shutil.rmtree(OUT, ignore_errors=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(args, check=True, capture_output=True, text=True, env=env).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    summary = json.loads(out[out.index("{"):])
    summary["cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return summary

def best_run(args, env=None):
    runs = [one_run(args, env) for _ in range(RUNS)]
    return max(runs, key=lambda s: s["events_per_s"])

def cost():
    # Interleaved, so that a slow spell of the machine hits both; CPU seconds are
    # steadier than wall time on a shared machine.
    print(f"\n3. the 50M log, 2 workers: checkpoints off and every 30 s ({RUNS} runs each, interleaved)")
    runs = {"off": [], "30 s": []}
    for _ in range(RUNS):
        runs["off"].append(one_run(run_args("50m", 2, "")))
        runs["30 s"].append(one_run(run_args("50m", 2, f"{OUT}/checkpoints")))
    for name, rs in runs.items():
        walls = " ".join(f"{s['wall_time_s']:.1f}" for s in rs)
        cpus = " ".join(f"{s['cpu_s']:.1f}" for s in rs)
        best = max(s["events_per_s"] for s in rs)
        print(f"  checkpoints {name:>5}: wall {walls} s, CPU {cpus} s, best {best:.0f} events/s")
    cpu = {name: min(s["cpu_s"] for s in rs) for name, rs in runs.items()}
    print(f"  cost in CPU seconds (least of each): {100 * (cpu['30 s'] / cpu['off'] - 1):.1f}%")

def cluster_run(processes, workers):
    if processes == 1:
        return best_run(run_args("5m", workers, ""))
    env = dict(os.environ, SKEWLESS_BIN=BIN, SKEWLESS_CLUSTER_LOGS=f"/tmp/skewless-bench-cluster")
    return best_run(["scripts/cluster.sh", str(processes)] + run_args("5m", workers, "")[2:], env)

def processes(shapes):
    print(f"\n4. the 5M log by processes x workers ({os.cpu_count()} cores, best of {RUNS})")
    for p, w in shapes:
        s = cluster_run(p, w)
        print(f"  {p} x {w}: {s['wall_time_s']:7.1f} s  {s['events_per_s']:>10.0f} events/s")

if mode == "--cost":
    cost()
elif mode == "--scaling":
    ws = int(os.environ.get("WORKERS", "4"))
    processes([(int(p), ws) for p in os.environ.get("PROCESSES", "1 2 4").split()])
else:
    size_and_recovery()
    if mode != "--quick":
        cost()
    processes([(1, 1), (1, 2), (2, 1)])
PY
