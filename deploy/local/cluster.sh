#!/usr/bin/env bash
# A local three-node RabbitMQ cluster for failover and fault tests (contract §1,
# `make cluster` / `make cluster-stop`): three nodes of Debian's rabbitmq-server on
# loopback, data and logs under .local/cluster/, nodes 2 and 3 joined to node 1, the
# management plugin on every node. Installs rabbitmq-server when it is missing.
#
#   deploy/local/cluster.sh start        # idempotent: starts the nodes that are down,
#                                        # joins those not clustered, waits for 3 running
#   deploy/local/cluster.sh stop [N…]    # all nodes, or only nodes N…; fine when none runs
#   deploy/local/cluster.sh kill N…      # kill -9 node N's Erlang VM (fault tests: a crash,
#                                        # not a stop); `start` brings it back
#   deploy/local/cluster.sh status       # each node up or down, and the running members
#   deploy/local/cluster.sh urls         # the amqp.url list for Herald
#
# Node i (1–3) listens for AMQP on HERALD_CLUSTER_PORTS + i − 1 (default 5681–5683), for
# the management API on HERALD_CLUSTER_MGMT_PORTS + i − 1 (15681–15683), is named
# herald-c<i>-<amqp port>@localhost and keeps its files in HERALD_CLUSTER_DIR/c<i>
# (default .local/cluster/c<i>). The nodes share one Erlang cookie, HERALD_CLUSTER_DIR/
# .erlang.cookie, made at the first start.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BASE_PORT=${HERALD_CLUSTER_PORTS:-5681}
MGMT_BASE_PORT=${HERALD_CLUSTER_MGMT_PORTS:-15681}
CLUSTER_DIR=${HERALD_CLUSTER_DIR:-$ROOT/.local/cluster}
NODES=(1 2 3)

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { printf '[cluster] error: %s\n' "$*" >&2; exit 1; }

# shellcheck source=deploy/lib/apt.sh
. "$ROOT/deploy/lib/apt.sh"
# shellcheck source=deploy/lib/rabbitmq.sh
. "$ROOT/deploy/lib/rabbitmq.sh"

amqp_port() { echo $((BASE_PORT + $1 - 1)); }
mgmt_port() { echo $((MGMT_BASE_PORT + $1 - 1)); }
node_name() { echo "herald-c$1-$(amqp_port "$1")@localhost"; }
node_dir() { echo "$CLUSTER_DIR/c$1"; }

# The environment of node $1's server and of the rabbitmqctl that talks to it. One HOME
# for all three: the Erlang cookie in it is what lets them (and rabbitmqctl) talk.
node_env() {
  local i=$1 dir; dir=$(node_dir "$1")
  mkdir -p "$dir/log" "$dir/mnesia"
  export HOME="$CLUSTER_DIR"
  export ERL_CRASH_DUMP="$dir/log/erl_crash.dump"
  export RABBITMQ_NODENAME; RABBITMQ_NODENAME=$(node_name "$i")
  export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
  export RABBITMQ_NODE_PORT; RABBITMQ_NODE_PORT=$(amqp_port "$i")
  # Erlang distribution: AMQP port + 20000, as services.sh does for its node (25673), so
  # 25681–25683 clash neither with it nor with a system node's 25672.
  export RABBITMQ_DIST_PORT=$((RABBITMQ_NODE_PORT + 20000))
  export RABBITMQ_MNESIA_BASE="$dir/mnesia"
  export RABBITMQ_LOG_BASE="$dir/log"
  export RABBITMQ_PID_FILE="$dir/rabbitmq.pid"
  export RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf"
  export RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
  export ERL_EPMD_ADDRESS=127.0.0.1
  export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
  export RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
}

# rabbitmqctl against node $1 (in a subshell: the environment stays per node).
ctl() {
  local i=$1; shift
  (node_env "$i"; "$(rabbit_bin)/rabbitmqctl" -n "$(node_name "$i")" "$@")
}

# Node $1's server is alive: the Erlang VM (its pid file, written a moment into boot) or
# the rabbitmq-server script that launched it and lives as long as it (launch.pid). A pid
# counts only while its process carries the node's name in its environment: once the node
# is gone its pid may belong to anything else.
node_alive() {
  local f pid name; name=$(node_name "$1")
  for f in rabbitmq.pid launch.pid; do
    f="$(node_dir "$1")/$f"
    [ -s "$f" ] || continue
    pid=$(cat "$f")
    tr '\0' '\n' 2>/dev/null < "/proc/$pid/environ" | grep -qxF "RABBITMQ_NODENAME=$name" \
      && return 0
  done
  return 1
}

# The members of node $1's cluster that are running, one a line (cluster_status).
running_nodes() {
  ctl "$1" -q cluster_status --formatter json 2>/dev/null \
    | sed -n 's/.*"running_nodes":\[\([^]]*\)\].*/\1/p' | tr -d '"' | tr ',' '\n' | sed '/^$/d'
}

make_cookie() {
  mkdir -p "$CLUSTER_DIR"
  local cookie="$CLUSTER_DIR/.erlang.cookie"
  [ -s "$cookie" ] && return 0
  (umask 077; head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 32 > "$cookie")
  chmod 400 "$cookie"
}

write_config() {
  local i=$1 dir; dir=$(node_dir "$1")
  mkdir -p "$dir/log" "$dir/mnesia"
  cat > "$dir/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$(amqp_port "$i")
management.tcp.ip = 127.0.0.1
management.tcp.port = $(mgmt_port "$i")
loopback_users.guest = true
log.console = false
log.file.level = warning
# A development node shares the disk with builds: only refuse publishes when really full.
disk_free_limit.absolute = 200MB
# RabbitMQ's advice for three nodes: a node cut off from the majority pauses rather than
# go on alone, so the two sides of a partition never accept conflicting writes.
cluster_partition_handling = pause_minority
CONF
  echo '[].' > "$dir/advanced.config"
  echo '[rabbitmq_management].' > "$dir/enabled_plugins"
}

# Launches node $1 unless its process is alive; does not wait.
launch() {
  local i=$1 port; port=$(amqp_port "$1")
  if node_alive "$i"; then
    port_open "$port" || log "node $i ($(node_name "$i")) is booting"
    return 0
  fi
  port_open "$port" && die "port $port is taken by something else (set HERALD_CLUSTER_PORTS)"
  port_open "$(mgmt_port "$i")" \
    && die "port $(mgmt_port "$i") is taken by something else (set HERALD_CLUSTER_MGMT_PORTS)"
  write_config "$i"
  log "starting node $i $(node_name "$i") on 127.0.0.1:$port (management :$(mgmt_port "$i"))"
  (
    node_env "$i"
    cd "$(node_dir "$i")"
    setsid nohup "$(rabbit_bin)/rabbitmq-server" > "$(node_dir "$i")/log/console.log" 2>&1 < /dev/null &
    echo $! > "$(node_dir "$i")/launch.pid"
  )
}

await_node() {
  local i=$1 _
  for _ in $(seq 1 60); do
    if ctl "$i" -q await_startup --timeout 5 >/dev/null 2>&1 && port_open "$(amqp_port "$i")"; then
      return 0
    fi
    node_alive "$i" || break
    sleep 1
  done
  tail -n 30 "$(node_dir "$i")/log/console.log" >&2 || true
  die "node $i ($(node_name "$i")) did not start (logs in $(node_dir "$i")/log)"
}

# Node $1 (2 or 3) joins node 1's cluster unless it is already a running member of it. A
# node that was a member rejoins by itself when it starts again; one that is not (first
# start, or its data was removed) is reset and joined.
join() {
  local i=$1 first; first=$(node_name 1)
  running_nodes "$i" | grep -qxF "$first" && return 0
  log "joining node $i to $first"
  # The CLI prints the node's boot warnings (feature flags, connection tables) as it goes:
  # kept in join.log, shown when a step fails.
  local out; out="$(node_dir "$i")/log/join.log"
  {
    ctl "$i" -q stop_app &&
    { ctl "$i" -q reset || ctl "$i" -q force_reset; } &&
    ctl "$i" -q join_cluster "$first" &&
    ctl "$i" -q start_app
  } > "$out" 2>&1 || { tail -n 20 "$out" >&2; die "node $i could not join $first (see $out)"; }
}

await_cluster() {
  local _ running=0
  for _ in $(seq 1 60); do
    running=$(running_nodes 1 | wc -l)
    [ "$running" -eq "${#NODES[@]}" ] && return 0
    sleep 1
  done
  die "cluster_status of node 1 shows $running running nodes, not ${#NODES[@]}"
}

urls() {
  local i list=""
  for i in "${NODES[@]}"; do
    list="$list${list:+,}amqp://guest:guest@127.0.0.1:$(amqp_port "$i")/%2f"
  done
  echo "$list"
}

cluster_start() {
  rabbit_install
  make_cookie
  # Every node at once: after a full stop each waits for the others to load its tables,
  # so started one after the other the first would wait for nodes not yet launched.
  local i
  for i in "${NODES[@]}"; do launch "$i"; done
  for i in "${NODES[@]}"; do await_node "$i"; done
  for i in "${NODES[@]:1}"; do join "$i"; done
  await_cluster
  log "cluster running: $(running_nodes 1 | tr '\n' ' ')"
  log "amqp.url  $(urls)"
}

# Stops nodes $@ (default: all, node 1 last); a node that is not running is skipped.
cluster_stop() {
  rabbit_bin >/dev/null || return 0
  local i targets=("$@")
  [ ${#targets[@]} -gt 0 ] || targets=(3 2 1)
  for i in "${targets[@]}"; do
    [ -d "$(node_dir "$i")" ] || continue
    node_alive "$i" || continue
    log "stopping node $i ($(node_name "$i"))"
    # Given the pid file, rabbitmqctl stop returns once the VM has exited, but waits
    # forever for a pid file that is not there (a node stopped while booting): bounded.
    local pid_file; pid_file="$(node_dir "$i")/rabbitmq.pid"
    [ -s "$pid_file" ] || pid_file=""
    (node_env "$i"; timeout 120 "$(rabbit_bin)/rabbitmqctl" -n "$(node_name "$i")" -q stop \
      ${pid_file:+"$pid_file"}) >/dev/null 2>&1 || true
    # The launching script exits a moment after the VM.
    local _
    for _ in $(seq 1 50); do node_alive "$i" || break; sleep 0.2; done
    node_alive "$i" && log "node $i is still running after rabbitmqctl stop"
  done
  return 0
}

# Kills nodes $@ with SIGKILL, as a crash would: the Erlang VM (rabbitmq.pid) and the
# script that launched it; waits until neither is alive. A node not running is skipped.
cluster_kill() {
  local i f pid
  for i in "$@"; do
    node_alive "$i" || continue
    log "killing node $i ($(node_name "$i")) with SIGKILL"
    for f in rabbitmq.pid launch.pid; do
      f="$(node_dir "$i")/$f"
      [ -s "$f" ] || continue
      pid=$(cat "$f")
      if tr '\0' '\n' 2>/dev/null < "/proc/$pid/environ" | grep -qxF "RABBITMQ_NODENAME=$(node_name "$i")"; then
        kill -9 "$pid" 2>/dev/null || true
      fi
    done
    local _
    for _ in $(seq 1 50); do node_alive "$i" || break; sleep 0.2; done
    node_alive "$i" && die "node $i is still alive after SIGKILL"
  done
  return 0
}

cluster_status() {
  local i up=0
  for i in "${NODES[@]}"; do
    if node_alive "$i" && port_open "$(amqp_port "$i")"; then
      log "node $i $(node_name "$i") up on $(amqp_port "$i") (management :$(mgmt_port "$i"))"
      up=$((up + 1))
    else
      log "node $i $(node_name "$i") down"
    fi
  done
  for i in "${NODES[@]}"; do
    if node_alive "$i" && port_open "$(amqp_port "$i")"; then
      log "running members: $(running_nodes "$i" | tr '\n' ' ')"
      break
    fi
  done
  [ "$up" -eq "${#NODES[@]}" ]
}

check_nodes() {
  local i
  for i in "$@"; do
    case " ${NODES[*]} " in *" $i "*) ;; *) die "no node $i (nodes: ${NODES[*]})" ;; esac
  done
}

# Sourced (deploy/local/cluster_test.sh): define the functions, run nothing.
if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then return 0; fi

command=${1:-start}
[ $# -gt 0 ] && shift
case "$command" in
  start) cluster_start ;;
  stop) check_nodes "$@"; cluster_stop "$@" ;;
  kill) [ $# -gt 0 ] || die "usage: $0 kill N…"; check_nodes "$@"; cluster_kill "$@" ;;
  status) cluster_status ;;
  urls) urls ;;
  *) die "usage: $0 start|stop [N…]|kill N…|status|urls" ;;
esac
