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

start() {
  install
  if answers; then return 0; fi
  mkdir -p "$data"
  echo "kafka.sh: starting tansu on 127.0.0.1:$port (data in $data)" >&2
  # tansu resolves the SQLite path against its working directory.
  (cd "$data" && exec setsid nohup "$bin" broker \
    --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine "sqlite://tansu.db" >>"$log" 2>&1 < /dev/null) &
  echo $! >"$pidfile"
  for _ in $(seq 1 150); do
    if answers; then return 0; fi
    kill -0 "$(cat "$pidfile")" 2>/dev/null || break
    sleep 0.2
  done
  echo "kafka.sh: tansu did not answer on port $port; last log lines:" >&2
  tail -20 "$log" >&2
  exit 1
}

stop() {
  if [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    kill "$(cat "$pidfile")"
    for _ in $(seq 1 50); do kill -0 "$(cat "$pidfile")" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$(cat "$pidfile")" 2>/dev/null || true
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
