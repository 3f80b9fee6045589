#!/usr/bin/env bash
# Proves that `make run` can be started, stopped and started again on one database, and
# that `herald migrate` runs a third time after that (issue 13, defect 1: the second
# `herald migrate` on a database whose user is named `herald` failed with
# `relation "endpoints" already exists`, so the second `make run` did too).
#
#   deploy/local/check-rerun.sh      (`make test` runs it after the cargo tests)
#
# 1. A fresh database (RERUN_DB, default herald_rerun_check) on the local PostgreSQL, as
#    user herald: the first run migrates it from nothing.
# 2. `make run` in the background, its own process group, HERALD__API__LISTEN on a free
#    port; wait until /readyz answers 200; SIGTERM the group; every process must be gone.
# 3. The same again, on the same database.
# 4. `herald migrate` alone, a third time.
# Any step failing prints the tail of its log and exits non-zero.
#
# Herald gets a topology prefix and a source exchange of its own (herald-rerun-check), so
# that it neither takes events from a `make run` going on the same broker nor collects
# copies of the ERP's events afterwards; its queues and exchanges are deleted at the end.
# The services must be up (`make services`; `make test` starts them first).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

log() { printf '[rerun] %s\n' "$*" >&2; }
die() { printf '[rerun] error: %s\n' "$*" >&2; exit 1; }

# The same defaults as the Makefile, which exports them when `make test` runs this.
PG_PORT=${HERALD_PG_PORT:-5433}
AMQP_PORT=${HERALD_AMQP_PORT:-5673}
MGMT_PORT=${HERALD_AMQP_MGMT_PORT:-15673}
BASE_DB_URL=${HERALD__DATABASE__URL:-postgres://herald:herald@127.0.0.1:$PG_PORT/herald}
export HERALD__AMQP__URL=${HERALD__AMQP__URL:-amqp://guest:guest@127.0.0.1:$AMQP_PORT/%2f}
MGMT_URL=${HERALD_AMQP_MGMT_URL:-http://guest:guest@127.0.0.1:$MGMT_PORT}
# Startup includes compiling when the binary is not built yet: the build happens first,
# outside this limit (see below), so 120 s is for migrate + startup only.
READY_TIMEOUT=${RERUN_READY_TIMEOUT:-120}
# Herald's shutdown grace is 30 s (delivery.shutdown_grace); a little more for cargo/make.
STOP_TIMEOUT=${RERUN_STOP_TIMEOUT:-45}
RERUN_DB=${RERUN_DB:-herald_rerun_check}
PREFIX=herald-rerun-check

export HERALD__DATABASE__URL="${BASE_DB_URL%/*}/$RERUN_DB"
export HERALD__TOPOLOGY__PREFIX="$PREFIX"
export HERALD__INGEST__EXCHANGES="$PREFIX.events"

LOGS=$(mktemp -d)
group=""   # process group of the `make run` going on, for the exit trap

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# HTTP status of GET http://127.0.0.1:$1$2, or 000 (bash's /dev/tcp: curl is not needed).
http_status() {
  timeout 5 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" "$2" >&3
    IFS=" " read -r _ status _ <&3 && echo "$status"' _ "$1" "$2" 2>/dev/null || echo 000
}

free_port() {
  local port
  for port in $(shuf -i 20000-29999 -n 50); do
    port_open "$port" || { echo "$port"; return 0; }
  done
  return 1
}

# Processes still in process group $1.
group_members() { pgrep -g "$1" 2>/dev/null || true; }

fail_with_log() { # message log
  printf '[rerun] ---- last 40 lines of %s\n' "$2" >&2
  tail -n 40 "$2" >&2 || true
  printf '[rerun] ----\n' >&2
  die "$1"
}

psql_bin() {
  command -v psql 2>/dev/null && return 0
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k4 -n -r); do
    [ -x "$d/psql" ] && { echo "$d/psql"; return 0; }
  done
  return 1
}

admin_sql() {
  PGOPTIONS=--client-min-messages=warning \
    "$PSQL" "${BASE_DB_URL%/*}/postgres" -v ON_ERROR_STOP=1 -qtAc "$1"
}

# Deletes the queues and exchanges named $PREFIX.* through the management API.
delete_topology() {
  command -v curl >/dev/null 2>&1 || { log "curl not found: $PREFIX.* queues left on the broker"; return 0; }
  local kind name
  for kind in queues exchanges; do
    for name in $(curl -fsS "$MGMT_URL/api/$kind/%2f?columns=name" 2>/dev/null \
        | grep -o "\"name\":\"$PREFIX\\.[^\"]*\"" | cut -d'"' -f4); do
      curl -fsS -X DELETE "$MGMT_URL/api/$kind/%2f/$name" >/dev/null 2>&1 \
        || log "could not delete $kind $name"
    done
  done
}

cleanup() {
  local rc=$?
  if [ -n "$group" ] && [ -n "$(group_members "$group")" ]; then
    log "killing what is left of process group $group"
    kill -KILL -- "-$group" 2>/dev/null || true
  fi
  delete_topology
  if [ "$rc" -eq 0 ]; then
    rm -rf "$LOGS"
    admin_sql "DROP DATABASE IF EXISTS $RERUN_DB WITH (FORCE)" >/dev/null 2>&1 || true
  else
    log "logs kept in $LOGS, database $RERUN_DB kept for a look"
  fi
}
trap cleanup EXIT

# One `make run`: started, ready, stopped, nothing left behind.
run_once() { # n
  local n=$1 port out pid i status
  port=$(free_port) || die "no free port found"
  out="$LOGS/make-run-$n.log"
  log "run $n: make run, api.listen 127.0.0.1:$port (log $out)"
  # setsid: its own process group, so that one signal reaches make, cargo and herald.
  HERALD__API__LISTEN="127.0.0.1:$port" setsid make --no-print-directory run > "$out" 2>&1 < /dev/null &
  pid=$!
  group=$pid

  status=000
  for ((i = 0; i < READY_TIMEOUT; i++)); do
    status=$(http_status "$port" /readyz)
    [ "$status" = 200 ] && break
    # Exited already (migrate failed, port taken, ...): no point in waiting.
    kill -0 "$pid" 2>/dev/null || { wait "$pid" || true; fail_with_log "run $n: make run exited before /readyz answered 200" "$out"; }
    sleep 1
  done
  [ "$status" = 200 ] || fail_with_log "run $n: /readyz answered $status, not 200, within ${READY_TIMEOUT}s" "$out"
  log "run $n: ready after ${i}s"

  kill -TERM -- "-$group"
  for ((i = 0; i < STOP_TIMEOUT; i++)); do
    [ -z "$(group_members "$group")" ] && break
    sleep 1
  done
  if [ -n "$(group_members "$group")" ]; then
    pgrep -a -g "$group" >&2 || true
    fail_with_log "run $n: still running ${STOP_TIMEOUT}s after SIGTERM" "$out"
  fi
  wait "$pid" 2>/dev/null || true
  group=""
  port_open "$port" && fail_with_log "run $n: something still listens on $port after the stop" "$out"
  grep -q 'panicked at' "$out" && fail_with_log "run $n: herald panicked" "$out"
  log "run $n: stopped after ${i}s, no process left"
}

# ---------------------------------------------------------------- prerequisites
PSQL=$(psql_bin) || die "psql not found (run make services first)"
port_open "$PG_PORT" || die "PostgreSQL is not up on 127.0.0.1:$PG_PORT (run make services)"
port_open "$AMQP_PORT" || die "RabbitMQ is not up on 127.0.0.1:$AMQP_PORT (run make services)"

log "fresh database $RERUN_DB"
admin_sql "DROP DATABASE IF EXISTS $RERUN_DB WITH (FORCE)" >/dev/null
admin_sql "CREATE DATABASE $RERUN_DB" >/dev/null
delete_topology

# Build first, outside the readiness limit: `make run` (cargo run) would compile here, and
# on a 2-core machine a cold build takes longer than any sensible startup limit.
log "cargo build --bin herald"
cargo build --quiet --bin herald

# ---------------------------------------------------------------- the runs
run_once 1
run_once 2

log "run 3: herald migrate"
out="$LOGS/migrate-3.log"
cargo run --quiet --bin herald -- migrate --config deploy/local/herald.toml > "$out" 2>&1 \
  || fail_with_log "run 3: herald migrate failed on a database it had migrated" "$out"

log "make run started, stopped and started again on database $RERUN_DB; migrate ran a third time"
echo "3 passed, 0 failed"
