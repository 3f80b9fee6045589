#!/usr/bin/env bash
# The fault suite's own PostgreSQL (`make faults`, tests/it/faults/database.rs): stopped
# and killed on purpose, so never the shared one of `make services` (5433) that other
# tests use. Same packages and setup as services.sh, port HERALD_FAULTS_PG_PORT (5439),
# data under .local/faults/postgres.
#
#   deploy/local/faults_pg.sh start    # idempotent; creates database herald
#   deploy/local/faults_pg.sh stop     # pg_ctl stop -m fast; fine when it is not running
#   deploy/local/faults_pg.sh kill     # SIGKILL to the postmaster and its children (a crash)
#   deploy/local/faults_pg.sh status
set -euo pipefail

FAULTS_PG_PORT=${HERALD_FAULTS_PG_PORT:-5439}
[ "$FAULTS_PG_PORT" != "${HERALD_SHARED_PG_PORT:-5433}" ] \
  || { echo "[faults-pg] error: port $FAULTS_PG_PORT is the shared PostgreSQL's" >&2; exit 1; }
HERALD_PG_PORT=$FAULTS_PG_PORT
# shellcheck source=deploy/local/services.sh
. "$(dirname "${BASH_SOURCE[0]}")/services.sh"
PG_DIR="$LOCAL/faults/postgres"
mkdir -p "$LOCAL/faults"

pg_kill() {
  local bin; bin=$(pg_bin) || return 0
  [ -e "$PG_DIR" ] && PG_DIR=$(readlink -f "$PG_DIR")
  [ -s "$PG_DIR/data/postmaster.pid" ] || return 0
  local pid; pid=$(head -n 1 "$PG_DIR/data/postmaster.pid")
  # Only a postmaster whose data directory is ours.
  grep -qF -- "$PG_DIR/data" "/proc/$pid/cmdline" 2>/dev/null || return 0
  log "killing PostgreSQL $pid and its children with SIGKILL"
  # shellcheck disable=SC2046
  kill -9 "$pid" $(pgrep -P "$pid") 2>/dev/null || true
  local _
  for _ in $(seq 1 50); do
    [ -d "/proc/$pid" ] || [ -n "$(pgrep -P "$pid")" ] || return 0
    sleep 0.1
  done
  return 0
}

case "${1:-start}" in
  start) pg_start; log "fault suite database postgres://herald:herald@127.0.0.1:$PG_PORT/herald" ;;
  stop) pg_stop ;;
  kill) pg_kill ;;
  status)
    if port_open "$PG_PORT"; then log "PostgreSQL up on $PG_PORT"; else log "PostgreSQL down on $PG_PORT"; exit 1; fi ;;
  *) die "usage: $0 start|stop|kill|status" ;;
esac
