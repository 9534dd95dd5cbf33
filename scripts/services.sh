#!/usr/bin/env bash
# Start the local PostgreSQL and Redis that the store tests use, when they are installed but not running.
# Tests that need a server skip with a clear reason when it is truly unavailable.
set -u
if command -v pg_isready >/dev/null 2>&1 && ! pg_isready -h 127.0.0.1 -q 2>/dev/null; then
  if [ -d /etc/postgresql ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
fi
if command -v redis-server >/dev/null 2>&1 && ! redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
fi
for i in 1 2 3 4 5 6 7 8 9 10; do
  pg_isready -h 127.0.0.1 -q 2>/dev/null && break
  sleep 1
done
exit 0
