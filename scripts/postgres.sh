#!/usr/bin/env bash
# A throwaway PostgreSQL server for the store tests, from Debian's `postgresql` package
# (binaries in /usr/lib/postgresql/*/bin; the Debian cluster and pg_ctlcluster are not
# used). Run as root; the server runs as the `postgres` user (PostgreSQL refuses root).
#
#   eval "$(scripts/postgres.sh start)"   # prints: export FERRY_TEST_POSTGRES=...
#   scripts/postgres.sh stop              # stops it and removes its directory
#   scripts/postgres.sh status
#
# It listens on 127.0.0.1 only, port 55432 (FERRY_PG_PORT overrides), with trust
# authentication, fsync off and its unix socket, data and log in a temporary directory
# recorded in /tmp/ferry-postgres.state (FERRY_PG_STATE overrides, so two runs on one
# machine can each have their own). `start` is idempotent: when the recorded server runs,
# it prints the exports again, with FERRY_PG_STARTED=0 so that a caller stops only a
# server it started itself. Only the export lines go to standard output.
set -euo pipefail

STATE="${FERRY_PG_STATE:-/tmp/ferry-postgres.state}"
PORT="${FERRY_PG_PORT:-55432}"

die() { echo "scripts/postgres.sh: $*" >&2; exit 1; }
say() { echo "scripts/postgres.sh: $*" >&2; }

[ "$(id -u)" -eq 0 ] || die "must run as root (it runs the server as the postgres user)"

# Reads the state file (key=value lines) without executing it.
dir="" port="" bin=""
read_state() {
  dir="" port="" bin=""
  [ -f "$STATE" ] || return 1
  [ "$(stat -c %u "$STATE")" -eq 0 ] || die "$STATE is not owned by root; remove it"
  while IFS='=' read -r key value; do
    case "$key" in
      dir) dir=$value ;;
      port) port=$value ;;
      bin) bin=$value ;;
    esac
  done <"$STATE"
  [ -n "$dir" ] && [ -n "$port" ] && [ -n "$bin" ]
}

running() {
  read_state && [ -d "$dir/data" ] && runuser -u postgres -- "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1
}

exports() {
  echo "export FERRY_TEST_POSTGRES=postgres://postgres@127.0.0.1:$port/postgres"
  echo "export FERRY_PG_DIR=$dir"
  # Its unix socket directory: servers in network namespaces reach it there.
  echo "export FERRY_TEST_POSTGRES_SOCKET=$dir"
}

start() {
  if running; then
    say "already running on 127.0.0.1:$port ($dir)"
    exports
    echo "export FERRY_PG_STARTED=0"
    return
  fi
  # A stale state file (the machine restarted, the server died): clean it up first.
  if read_state; then
    rm -rf -- "$dir"
    rm -f "$STATE"
  fi
  bin=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
    die "PostgreSQL is not installed: apt-get install postgresql"
  fi
  id postgres >/dev/null 2>&1 || die "no postgres user: apt-get install postgresql"
  port=$PORT
  dir=$(mktemp -d /tmp/ferry-postgres.XXXXXX)
  chown postgres:postgres "$dir"
  chmod 700 "$dir"
  printf 'dir=%s\nport=%s\nbin=%s\n' "$dir" "$port" "$bin" >"$STATE"
  if ! runuser -u postgres -- "$bin/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 --locale=C.UTF-8 \
    >"$dir/initdb.log" 2>&1; then
    cat "$dir/initdb.log" >&2
    stop
    die "initdb failed"
  fi
  local opts="-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c synchronous_commit=off"
  opts+=" -c full_page_writes=off -c max_connections=300"
  if ! runuser -u postgres -- "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 -o "$opts" start \
    >/dev/null 2>&1; then
    tail -n 20 "$dir/postgres.log" >&2 || true
    stop
    die "the server did not start (is port $port taken? FERRY_PG_PORT picks another)"
  fi
  say "started PostgreSQL ($("$bin/postgres" --version)) on 127.0.0.1:$port, directory $dir"
  exports
  echo "export FERRY_PG_STARTED=1"
}

stop() {
  if ! read_state; then
    say "not running (no $STATE)"
    return
  fi
  if [ -d "$dir/data" ]; then
    runuser -u postgres -- "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
  fi
  case "$dir" in
    /tmp/ferry-postgres.*) rm -rf -- "$dir" ;;
    *) say "not removing unexpected directory $dir" ;;
  esac
  rm -f "$STATE"
  say "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status)
    if running; then
      say "running on 127.0.0.1:$port ($dir)"
    else
      say "not running"
      exit 1
    fi
    ;;
  *) die "usage: $0 start|stop|status" ;;
esac
