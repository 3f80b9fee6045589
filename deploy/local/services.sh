#!/usr/bin/env bash
# Herald's private development services: RabbitMQ (with the management plugin) and
# PostgreSQL, kept under .local/ and listening on loopback only, on ports that do not
# clash with system-wide installs. Installs Debian's packages when they are missing.
#
#   deploy/local/services.sh start   # idempotent: does nothing for a service already up
#   deploy/local/services.sh stop
#   deploy/local/services.sh status
#
# Ports: HERALD_AMQP_PORT (5673), HERALD_AMQP_MGMT_PORT (15673), HERALD_PG_PORT (5433).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
LOCAL="$ROOT/.local"
AMQP_PORT=${HERALD_AMQP_PORT:-5673}
MGMT_PORT=${HERALD_AMQP_MGMT_PORT:-15673}
PG_PORT=${HERALD_PG_PORT:-5433}
# Erlang distribution port of our private node: next to, but never equal to, a system node's 25672.
DIST_PORT=$((AMQP_PORT + 20000))
RABBIT_DIR="$LOCAL/rabbitmq"
RABBIT_NODE="herald-$AMQP_PORT@localhost"
PG_DIR="$LOCAL/postgres"

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] error: %s\n' "$*" >&2; exit 1; }

# shellcheck source=deploy/lib/apt.sh
. "$ROOT/deploy/lib/apt.sh"

# shellcheck source=deploy/lib/rabbitmq.sh
. "$ROOT/deploy/lib/rabbitmq.sh"

# ---------------------------------------------------------------- RabbitMQ

rabbit_env() {
  # The Erlang cookie lives in HOME, shared by server and ctl. The directory must exist
  # before the first rabbitmqctl: an Erlang VM that cannot write its cookie crashes, and
  # writes erl_crash.dump into the current directory unless told where.
  mkdir -p "$RABBIT_DIR/log"
  export HOME="$RABBIT_DIR"
  export ERL_CRASH_DUMP="$RABBIT_DIR/log/erl_crash.dump"
  export RABBITMQ_NODENAME="$RABBIT_NODE"
  export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
  export RABBITMQ_NODE_PORT="$AMQP_PORT"
  export RABBITMQ_DIST_PORT="$DIST_PORT"
  export RABBITMQ_MNESIA_BASE="$RABBIT_DIR/mnesia"
  export RABBITMQ_LOG_BASE="$RABBIT_DIR/log"
  export RABBITMQ_PID_FILE="$RABBIT_DIR/rabbitmq.pid"
  export RABBITMQ_CONFIG_FILE="$RABBIT_DIR/rabbitmq.conf"
  export RABBITMQ_ADVANCED_CONFIG_FILE="$RABBIT_DIR/advanced.config"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$RABBIT_DIR/enabled_plugins"
  export ERL_EPMD_ADDRESS=127.0.0.1
  # The Erlang distribution listener too stays on loopback.
  export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
  export RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
}

rabbit_ctl() { "$(rabbit_bin)/rabbitmqctl" -n "$RABBIT_NODE" "$@"; }

rabbit_start() {
  rabbit_install
  rabbit_env
  if port_open "$AMQP_PORT" && rabbit_ctl -q status >/dev/null 2>&1; then
    log "RabbitMQ already running on 127.0.0.1:$AMQP_PORT"
    return 0
  fi
  if port_open "$AMQP_PORT" && command -v curl >/dev/null 2>&1 \
      && curl -fsS -u guest:guest "http://127.0.0.1:$MGMT_PORT/api/overview" >/dev/null 2>&1; then
    log "RabbitMQ already answering on 127.0.0.1:$AMQP_PORT (not from this checkout)"
    return 0
  fi
  port_open "$AMQP_PORT" && die "port $AMQP_PORT is taken by something else (set HERALD_AMQP_PORT)"
  mkdir -p "$RABBIT_DIR/log" "$RABBIT_DIR/mnesia"
  cat > "$RABBIT_DIR/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$AMQP_PORT
management.tcp.ip = 127.0.0.1
management.tcp.port = $MGMT_PORT
loopback_users.guest = true
log.console = false
log.file.level = warning
# A development node shares the disk with builds: only refuse publishes when really full.
disk_free_limit.absolute = 200MB
CONF
  echo '[].' > "$RABBIT_DIR/advanced.config"
  echo '[rabbitmq_management].' > "$RABBIT_DIR/enabled_plugins"
  log "starting RabbitMQ node $RABBIT_NODE on 127.0.0.1:$AMQP_PORT (management :$MGMT_PORT)"
  setsid nohup "$(rabbit_bin)/rabbitmq-server" > "$RABBIT_DIR/log/console.log" 2>&1 < /dev/null &
  local _
  for _ in $(seq 1 120); do
    if rabbit_ctl -q await_startup --timeout 5 >/dev/null 2>&1 && port_open "$AMQP_PORT"; then
      log "RabbitMQ ready"
      return 0
    fi
    sleep 1
  done
  tail -n 40 "$RABBIT_DIR/log/console.log" >&2 || true
  die "RabbitMQ did not start within 2 minutes (logs in $RABBIT_DIR/log)"
}

rabbit_stop() {
  rabbit_bin >/dev/null || return 0
  # No directory, no node of ours (and no rabbitmqctl run that would create one).
  [ -d "$RABBIT_DIR" ] || return 0
  rabbit_env
  if rabbit_ctl -q status >/dev/null 2>&1; then
    log "stopping RabbitMQ"
    rabbit_ctl -q stop >/dev/null 2>&1 || true
  fi
}

# -------------------------------------------------------------- PostgreSQL
pg_bin() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k4 -n -r); do
    local v; v=$(basename "$(dirname "$d")")
    [ "${v%%.*}" -ge 15 ] 2>/dev/null && [ -x "$d/pg_ctl" ] && { echo "$d"; return 0; }
  done
  command -v pg_ctl >/dev/null 2>&1 && { dirname "$(command -v pg_ctl)"; return 0; }
  return 1
}

# The package that brings PostgreSQL 15 or later. Its name differs by release: Debian 12 has
# postgresql-15, Debian 13 postgresql-17, Ubuntu 24.04 postgresql-16, and the unversioned
# `postgresql` metapackage depends on that one, but on Ubuntu 22.04 it brings 14, which is
# too old. So: the lowest versioned package from 15 up that apt can install (15 is what CI
# tests against); none when there is none. Needs the package lists (apt_update).
pg_package() {
  local v
  for v in $(apt-cache pkgnames postgresql- 2>/dev/null \
      | sed -n 's/^postgresql-\([0-9][0-9]*\)$/\1/p' | sort -n -u); do
    [ "$v" -ge 15 ] && apt_has "postgresql-$v" && { echo "postgresql-$v"; return 0; }
  done
  return 1
}

pg_install() {
  apt_update || return 1
  local pkg
  if pkg=$(pg_package); then
    apt_install "$pkg" && return 0
  else
    log "apt knows no postgresql-NN package from 15 up: trying the postgresql metapackage"
  fi
  apt_install postgresql
}

# PostgreSQL refuses to run as root: run it as an unprivileged user.
pg_user() {
  if [ "$(id -u)" -ne 0 ]; then id -un; return; fi
  if id postgres >/dev/null 2>&1; then echo postgres; return; fi
  id herald >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin herald
  echo herald
}

pg_as() {
  local user; user=$(pg_user)
  if [ "$(id -u)" -eq 0 ]; then (cd / && runuser -u "$user" -- "$@"); else "$@"; fi
}

# The data directory lives at .local/postgres. When the checkout sits where the
# unprivileged user cannot reach (e.g. under /root), it is kept in /var/tmp instead and
# .local/postgres links to it.
pg_prepare_dir() {
  local user=$1
  if [ ! -e "$PG_DIR" ]; then
    mkdir -p "$PG_DIR"
    if [ "$(id -u)" -eq 0 ]; then
      chown "$user" "$PG_DIR"
      if ! runuser -u "$user" -- test -w "$PG_DIR" 2>/dev/null; then
        rmdir "$PG_DIR"
        local alt
        alt="/var/tmp/herald-postgres-$PG_PORT-$(printf '%s' "$ROOT" | cksum | cut -d' ' -f1)"
        mkdir -p "$alt"; chown "$user" "$alt"; chmod 700 "$alt"
        ln -s "$alt" "$PG_DIR"
        log "$ROOT is not reachable by user $user: PostgreSQL data kept in $alt"
      fi
    fi
  fi
  chmod 700 "$PG_DIR/" 2>/dev/null || true
  # Hand PostgreSQL the real path: it cannot traverse the link's directory.
  PG_DIR=$(readlink -f "$PG_DIR")
}

pg_start() {
  pg_bin >/dev/null || pg_install || die "could not install PostgreSQL 15 or later"
  # The metapackage may have brought an older major version than 15.
  local bin; bin=$(pg_bin) \
    || die "no PostgreSQL 15+ binaries found (installed: $(ls /usr/lib/postgresql 2>/dev/null | tr '\n' ' '))"
  # A server answering as herald/herald on the port (another checkout's, or a git
  # worktree's) serves just as well.
  if port_open "$PG_PORT" && [ ! -f "$PG_DIR/data/PG_VERSION" ] && PGPASSWORD=herald "$bin/psql" \
      -h 127.0.0.1 -p "$PG_PORT" -U herald -d herald -tAc 'SELECT 1' >/dev/null 2>&1; then
    log "PostgreSQL already answering on 127.0.0.1:$PG_PORT (not from this checkout)"
    return 0
  fi
  local user; user=$(pg_user)
  pg_prepare_dir "$user"
  if [ ! -f "$PG_DIR/data/PG_VERSION" ]; then
    log "initialising PostgreSQL cluster in $PG_DIR/data"
    local pw="$PG_DIR/.pw"
    echo herald > "$pw"; [ "$(id -u)" -eq 0 ] && chown "$user" "$pw"
    pg_as "$bin/initdb" -D "$PG_DIR/data" -U herald --pwfile="$pw" \
      --auth-host=scram-sha-256 --auth-local=trust -E UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$pw"
    mkdir -p "$PG_DIR/run"; [ "$(id -u)" -eq 0 ] && chown "$user" "$PG_DIR/run"
    cat >> "$PG_DIR/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_DIR/run'
max_connections = 300
shared_buffers = 256MB
logging_collector = off
CONF
  fi
  if pg_as "$bin/pg_ctl" -D "$PG_DIR/data" status >/dev/null 2>&1; then
    log "PostgreSQL already running on 127.0.0.1:$PG_PORT"
  else
    port_open "$PG_PORT" && die "port $PG_PORT is taken by something else (set HERALD_PG_PORT)"
    log "starting PostgreSQL on 127.0.0.1:$PG_PORT"
    pg_as "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/postgres.log" -w -t 60 start >/dev/null \
      || { tail -n 30 "$PG_DIR/postgres.log" >&2; die "PostgreSQL did not start"; }
  fi
  if ! PGPASSWORD=herald "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U herald -d postgres -tAc \
      "SELECT 1 FROM pg_database WHERE datname = 'herald'" | grep -q 1; then
    PGPASSWORD=herald "$bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U herald herald
    log "created database herald"
  fi
  log "PostgreSQL ready"
}

pg_stop() {
  local bin; bin=$(pg_bin) || return 0
  [ -e "$PG_DIR" ] && PG_DIR=$(readlink -f "$PG_DIR")
  [ -f "$PG_DIR/data/PG_VERSION" ] || return 0
  if pg_as "$bin/pg_ctl" -D "$PG_DIR/data" status >/dev/null 2>&1; then
    log "stopping PostgreSQL"
    pg_as "$bin/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >/dev/null
  fi
}

# Sourced (deploy/local/services_test.sh): define the functions, run nothing.
if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then return 0; fi

case "${1:-start}" in
  start) pg_start; rabbit_start
         log "AMQP      amqp://guest:guest@127.0.0.1:$AMQP_PORT/%2f"
         log "database  postgres://herald:herald@127.0.0.1:$PG_PORT/herald" ;;
  stop) rabbit_stop; pg_stop ;;
  status)
    port_open "$AMQP_PORT" && log "RabbitMQ up on $AMQP_PORT" || log "RabbitMQ down"
    port_open "$PG_PORT" && log "PostgreSQL up on $PG_PORT" || log "PostgreSQL down" ;;
  *) die "usage: $0 start|stop|status" ;;
esac
