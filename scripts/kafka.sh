#!/usr/bin/env bash
# The test broker: tansu (a Kafka-compatible broker from crates.io), installed into a
# cache outside the repository and run on 127.0.0.1:9092 with its SQLite storage.
#
#   scripts/kafka.sh start    install if needed, start, wait until it answers metadata
#   scripts/kafka.sh stop     stop it (its data stays)
#   scripts/kafka.sh status   exit 0 when it answers
#   scripts/kafka.sh restart  stop, then start on the same data
#   scripts/kafka.sh reset    stop, remove its data, start empty (tansu's SQLite log
#                             slows it down as it grows: after a long day of tests its
#                             produce-to-consume latency was up to 50x a fresh broker's)
#
# Environment: SKEWLESS_CACHE (default ~/.cache/skewless), SKEWLESS_KAFKA_PORT (9092),
# SKEWLESS_KAFKA_DATA (default $SKEWLESS_CACHE/tansu-data).
set -euo pipefail
TANSU_VERSION=0.6.0
cache="${SKEWLESS_CACHE:-$HOME/.cache/skewless}"
root="$cache/tansu-$TANSU_VERSION"
bin="$root/bin/tansu"
port="${SKEWLESS_KAFKA_PORT:-9092}"
data="${SKEWLESS_KAFKA_DATA:-$cache/tansu-data}"
pidfile="$data/tansu.pid"
log="$data/tansu.log"

install() {
  [[ -x "$bin" ]] && return 0
  echo "kafka.sh: building tansu $TANSU_VERSION into $root (10-20 minutes the first time)" >&2
  mkdir -p "$root"
  # --locked matters: without it a newer dependency breaks the build.
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql \
    --root "$root" >"$cache/tansu-build.log" 2>&1 || { tail -40 "$cache/tansu-build.log" >&2; exit 1; }
}

answers() {
  # The port first (fast when nothing listens), then a metadata request.
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || return 1
  timeout 5 "$bin" topic list --broker "tcp://127.0.0.1:$port" >/dev/null 2>&1
}

# The pids of every tansu broker listening on our port, found by command line: a broker
# whose pidfile is gone (an earlier clone, a machine restored from a snapshot) or whose
# pid was reused is found all the same, and nothing else is ever killed.
broker_pids() { pgrep -f -- "tansu broker --listener-url tcp://127.0.0.1:$port( |\$)" || true; }

start() {
  install
  if answers; then return 0; fi
  # A broker that holds the port without answering would make the new one fail to bind.
  stop
  for _ in $(seq 1 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || break
    sleep 0.2
  done
  mkdir -p "$data"
  local attempt launched deadline
  for attempt in 1 2 3; do
    echo "kafka.sh: starting tansu on 127.0.0.1:$port (data in $data)" >&2
    # tansu resolves the SQLite path against its working directory. setsid forks when
    # its caller leads a process group, so the broker is watched by its command line.
    (cd "$data" && exec setsid nohup "$bin" broker \
      --listener-url "tcp://127.0.0.1:$port" \
      --advertised-listener-url "tcp://127.0.0.1:$port" \
      --storage-engine "sqlite://tansu.db" >>"$log" 2>&1 < /dev/null) &
    launched=$!
    deadline=$((SECONDS + 60))
    while ((SECONDS < deadline)); do
      if answers; then
        broker_pids | head -1 >"$pidfile"
        return 0
      fi
      if ! kill -0 "$launched" 2>/dev/null && [[ -z "$(broker_pids)" ]]; then break; fi
      sleep 0.2
    done
    echo "kafka.sh: tansu did not answer on port $port (try $attempt of 3); last log lines:" >&2
    tail -20 "$log" >&2
    ss -ltnp "sport = :$port" >&2 || true
    stop
    sleep 2
  done
  exit 1
}

stop() {
  local pids
  pids=$(broker_pids)
  if [[ -n "$pids" ]]; then
    # shellcheck disable=SC2086
    kill $pids 2>/dev/null || true
    for _ in $(seq 1 50); do [[ -z "$(broker_pids)" ]] && break; sleep 0.1; done
    pids=$(broker_pids)
    # shellcheck disable=SC2086
    [[ -z "$pids" ]] || kill -9 $pids 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  reset) stop; rm -rf "$data"; start ;;
  status) answers ;;
  *) echo "usage: $0 start|stop|restart|reset|status" >&2; exit 2 ;;
esac
