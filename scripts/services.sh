#!/usr/bin/env bash
# Start the local PostgreSQL and Redis that the store tests use, when they are installed but not
# running, and create the `test` database the tests connect to.
#
# Under CI=true a server that cannot be reached afterwards is a failure (exit 1): CI must not go
# green with the PostgreSQL and Redis tests skipped. Elsewhere it is a warning and the tests that
# need the server skip, saying why.
#
# PGHOST/PGPORT, BATON_TEST_DB (default test), BATON_REDIS_PORT and BATON_SERVICES_WAIT_S
# (seconds to wait for each server) override the defaults.
set -u
PGHOST="${PGHOST:-127.0.0.1}"
PGPORT="${PGPORT:-5432}"
REDIS_PORT="${BATON_REDIS_PORT:-6379}"
WAIT_S="${BATON_SERVICES_WAIT_S:-15}"
DB="${BATON_TEST_DB:-test}"
export PGHOST PGPORT
missing=()

pg_up() { pg_isready -h "$PGHOST" -p "$PGPORT" -q 2>/dev/null; }
redis_up() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; }

wait_for() {  # wait_for CHECK: poll once a second for WAIT_S seconds
  local i
  for ((i = 0; i < WAIT_S; i++)); do
    "$1" && return 0
    sleep 1
  done
  "$1"
}

if ! command -v pg_isready >/dev/null 2>&1; then
  missing+=("PostgreSQL (pg_isready not installed)")
else
  if ! pg_up && command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  fi
  if ! wait_for pg_up; then
    missing+=("PostgreSQL at $PGHOST:$PGPORT")
  elif ! psql -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'" 2>/dev/null \
      | grep -q 1; then
    createdb -U postgres "$DB" 2>/dev/null || runuser -u postgres -- env -u PGHOST createdb "$DB" 2>/dev/null \
      || missing+=("PostgreSQL database '$DB' (could not create it)")
  fi
fi

if ! command -v redis-cli >/dev/null 2>&1; then
  missing+=("Redis (redis-cli not installed)")
else
  if ! redis_up && command -v redis-server >/dev/null 2>&1; then
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log
  fi
  wait_for redis_up || missing+=("Redis at 127.0.0.1:$REDIS_PORT")
fi

if [ "${#missing[@]}" -gt 0 ]; then
  for what in "${missing[@]}"; do
    echo "services.sh: cannot reach $what" >&2
  done
  if [ "${CI:-}" = "true" ]; then
    echo "services.sh: CI=true, so a missing service is a failure (its tests would only skip)" >&2
    exit 1
  fi
  echo "services.sh: the tests that need it will skip" >&2
fi
exit 0
