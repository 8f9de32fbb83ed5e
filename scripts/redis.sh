#!/usr/bin/env bash
# Makes sure a Redis answers on 127.0.0.1:6379 (or $SKEWLESS_REDIS_PORT), starting one if
# none does. Installs redis-server from Debian's packages when it is missing.
set -euo pipefail
port="${SKEWLESS_REDIS_PORT:-6379}"

answers() { redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG; }

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  echo "redis.sh: installing redis-server" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
if answers; then
  exit 0
fi
echo "redis.sh: starting redis-server on 127.0.0.1:$port" >&2
mkdir -p /var/lib/redis /var/log/redis
redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
  --dir /var/lib/redis --logfile /var/log/redis/skewless.log
for _ in $(seq 1 50); do
  answers && exit 0
  sleep 0.1
done
echo "redis.sh: redis-server did not answer on port $port" >&2
exit 1
