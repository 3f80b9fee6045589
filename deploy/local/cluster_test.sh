#!/usr/bin/env bash
# Tests of deploy/local/cluster.sh with real RabbitMQ nodes: a cluster of its own (ports
# 5691–5693, management 15691–15693, files in a temporary directory), so a `make cluster`
# that is running is left alone. About 2 minutes: `make cluster-test` runs it, not
# `make test`.
#
#   1. start on nothing: three nodes running in one cluster; a quorum queue declared as
#      Herald declares its own (x-queue-type only) gets a member on every node
#   2. start again: nothing started, still three running
#   3. stop node 2: two running; start: node 2 alone is started and rejoins, and is an
#      online member of the queue again
#   4. stop; stop again: nothing runs, and the second stop is fine
#   5. start after the full stop: three running, the durable queue still there; stop
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

export HERALD_CLUSTER_PORTS=${CLUSTER_TEST_PORTS:-5691}
export HERALD_CLUSTER_MGMT_PORTS=${CLUSTER_TEST_MGMT_PORTS:-15691}
HERALD_CLUSTER_DIR=$(mktemp -d /tmp/herald-cluster-test.XXXXXX)
export HERALD_CLUSTER_DIR
CLUSTER="$HERE/cluster.sh"

# The helpers only (cluster.sh returns before its `case` when sourced), for the checks.
# shellcheck source=deploy/local/cluster.sh
source "$CLUSTER"

passed=0 failed=0
ok() { passed=$((passed + 1)); printf '  ok    %s\n' "$1"; }
fail() { failed=$((failed + 1)); printf '  FAIL  %s\n' "$1"; shift; printf '        %s\n' "$@"; }
expect_eq() { # name expected actual
  if [ "$2" = "$3" ]; then ok "$1"; else fail "$1" "expected: $2" "got:      $3"; fi
}

cleanup() {
  "$CLUSTER" stop >/dev/null 2>&1 || true
  rm -rf "$HERALD_CLUSTER_DIR"
}
trap cleanup EXIT

# Runs cluster.sh, keeping what it said in $out and its status in $rc; prints the time.
run() {
  local started=$SECONDS
  rc=0
  out=$("$CLUSTER" "$@" 2>&1) || rc=$?
  printf '  (cluster.sh %s: %ss, exit %s)\n' "$*" $((SECONDS - started)) "$rc"
}
running() { running_nodes "${1:-1}" | sort | tr '\n' ' '; }
all3="$(node_name 1) $(node_name 2) $(node_name 3) "
alive() { local i s=""; for i in 1 2 3; do node_alive "$i" && s="$s$i"; done; echo "${s:-none}"; }
mgmt() { curl -fsS -u guest:guest "http://127.0.0.1:$(mgmt_port 1)/api/$1" "${@:2}"; }
QUEUE=herald-cluster-test.quorum
# A field of the queue's management record, as sorted space-separated node names.
queue_field() {
  mgmt "queues/%2f/$QUEUE" | python3 -c \
    'import json, sys; print(" ".join(sorted(json.load(sys.stdin).get(sys.argv[1]) or [])))' "$1"
}

echo "[cluster_test] 1. start on nothing (files in $HERALD_CLUSTER_DIR)"
run start
expect_eq "start exits 0" 0 "$rc"
[ "$rc" -eq 0 ] || { printf '%s\n' "$out" >&2; exit 1; }
expect_eq "three nodes running in node 1's cluster_status" "$all3" "$(running 1)"
expect_eq "node 3 sees the same cluster" "$all3" "$(running 3)"
mgmt "queues/%2f/$QUEUE" -X PUT -H 'content-type: application/json' \
  -d '{"durable": true, "arguments": {"x-queue-type": "quorum"}}'
expect_eq "a quorum queue has a member on every node" "$all3" "$(queue_field members) "
case "$out" in
  *"amqp.url  amqp://guest:guest@127.0.0.1:5691/%2f,amqp://guest:guest@127.0.0.1:5692/%2f,amqp://guest:guest@127.0.0.1:5693/%2f"*)
    ok "start prints the amqp.url list" ;;
  *) fail "start prints the amqp.url list" "output: $out" ;;
esac

echo "[cluster_test] 2. start again"
run start
expect_eq "second start exits 0" 0 "$rc"
case "$out" in
  *"starting node"*) fail "second start starts nothing" "output: $out" ;;
  *) ok "second start starts nothing" ;;
esac
expect_eq "still three running" "$all3" "$(running 1)"

echo "[cluster_test] 3. stop node 2, start again"
run stop 2
expect_eq "stop 2 exits 0" 0 "$rc"
expect_eq "nodes 1 and 3 alive" 13 "$(alive)"
expect_eq "two running members" "$(node_name 1) $(node_name 3) " "$(running 1)"
run status
expect_eq "status exits non-zero with a node down" 1 "$rc"
run start
expect_eq "start exits 0" 0 "$rc"
starts=$(printf '%s\n' "$out" | grep -o 'starting node [0-9]' | tr '\n' ';' || true)
expect_eq "only node 2 is started" "starting node 2;" "$starts"
expect_eq "node 2 rejoined: three running" "$all3" "$(running 1)"
expect_eq "node 2 is an online member of the queue again" "$all3" "$(queue_field online) "
run status
expect_eq "status exits 0 with three up" 0 "$rc"

echo "[cluster_test] 4. stop, stop again"
run stop
expect_eq "stop exits 0" 0 "$rc"
expect_eq "no node alive" none "$(alive)"
run stop
expect_eq "stop with nothing running exits 0" 0 "$rc"
expect_eq "and stops nothing" "" "$out"

echo "[cluster_test] 5. start after a full stop"
run start
expect_eq "start exits 0" 0 "$rc"
expect_eq "three running" "$all3" "$(running 1)"
expect_eq "the durable quorum queue survived, on every node" "$all3" "$(queue_field members) "
run stop
expect_eq "stop exits 0" 0 "$rc"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
