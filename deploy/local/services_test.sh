#!/usr/bin/env bash
# Tests of deploy/local/services.sh's install and start-up logic, without installing or
# starting anything: apt-get, apt-cache and root are stubbed, so the releases whose
# PostgreSQL package is named differently (Debian 12, Debian 13, Ubuntu 22.04) can be
# played on any machine.
#
#   deploy/local/services_test.sh     (deploy/check.sh runs it)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# Defines the functions only (services.sh returns before its `case` when sourced).
# shellcheck source=deploy/local/services.sh
source "$HERE/services.sh"

passed=0 failed=0
ok() { passed=$((passed + 1)); printf '  ok    %s\n' "$1"; }
fail() { failed=$((failed + 1)); printf '  FAIL  %s\n' "$1"; shift; printf '        %s\n' "$@"; }
expect_eq() { # name expected actual
  if [ "$2" = "$3" ]; then ok "$1"; else fail "$1" "expected: $2" "got:      $3"; fi
}

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# ---------------------------------------------------------------- stubs
# A release is the package names apt knows and, per name, whether it has a candidate.
FAKE_PKGS=""    # names `apt-cache pkgnames` prints
NO_CANDIDATE="" # names whose `apt-cache policy` says "Candidate: (none)"
apt-cache() {
  case "$1" in
    pkgnames) local p; for p in $FAKE_PKGS; do case "$p" in "$2"*) echo "$p" ;; esac; done ;;
    policy)
      case " $FAKE_PKGS " in *" $2 "*) ;; *) return 0 ;; esac
      echo "$2:"; echo "  Installed: (none)"
      case " $NO_CANDIDATE " in
        *" $2 "*) echo "  Candidate: (none)" ;;
        *) echo "  Candidate: 1.0-1" ;;
      esac ;;
  esac
}
# Root commands are recorded, not run; `apt-get install` of a name in FAIL_INSTALL fails.
CALLS="$WORK/calls"
FAIL_INSTALL=""
as_root() {
  echo "$*" >> "$CALLS"
  case "$*" in
    *"apt-get install"*)
      local p; for p in $FAIL_INSTALL; do case " $* " in *" $p "*) return 100 ;; esac; done ;;
  esac
  return 0
}
installs() { grep -o 'apt-get install .*' "$CALLS" | sed 's/.*--no-install-recommends //' | tr '\n' ';'; }
updates() { grep -c 'apt-get update' "$CALLS" || true; }
reset() { : > "$CALLS"; apt_updated=""; FAIL_INSTALL=""; NO_CANDIDATE=""; }

# ---------------------------------------------------------------- which PostgreSQL package
echo "[services_test] pg_package: the lowest postgresql-NN from 15 up that apt can install"
FAKE_PKGS="postgresql postgresql-15 postgresql-15-postgis-3 postgresql-client-15 postgresql-common"
expect_eq "Debian 12: postgresql-15" postgresql-15 "$(pg_package || echo none)"
FAKE_PKGS="postgresql postgresql-17 postgresql-17-pgvector postgresql-client-17"
expect_eq "Debian 13: postgresql-17" postgresql-17 "$(pg_package || echo none)"
FAKE_PKGS="postgresql postgresql-14 postgresql-client-14"
expect_eq "Ubuntu 22.04 (only 14): none" none "$(pg_package || echo none)"
FAKE_PKGS="postgresql postgresql-9 postgresql-16 postgresql-18"
expect_eq "numeric order, not text order: postgresql-16" postgresql-16 "$(pg_package || echo none)"
FAKE_PKGS="postgresql postgresql-15 postgresql-16"; NO_CANDIDATE="postgresql-15"
expect_eq "a name without a candidate is skipped" postgresql-16 "$(pg_package || echo none)"

# ---------------------------------------------------------------- install and fall back
echo "[services_test] pg_install: falls back to the metapackage instead of exiting"
reset; FAKE_PKGS="postgresql postgresql-15"
rc=0; pg_install 2>/dev/null || rc=$?
expect_eq "Debian 12 installs postgresql-15 only" "0 postgresql-15;" "$rc $(installs)"
expect_eq "apt-get update runs once" 1 "$(updates)"

reset; FAKE_PKGS="postgresql postgresql-15"; FAIL_INSTALL="postgresql-15"
rc=0; pg_install 2>/dev/null || rc=$?
expect_eq "postgresql-15 failing: postgresql is tried" "0 postgresql-15;postgresql;" "$rc $(installs)"

reset; FAKE_PKGS="postgresql postgresql-14"
rc=0; pg_install 2>/dev/null || rc=$?
expect_eq "no versioned package from 15 up: the metapackage" "0 postgresql;" "$rc $(installs)"

reset; FAKE_PKGS="postgresql postgresql-15"; FAIL_INSTALL="postgresql-15 postgresql"
rc=0; out=$(pg_install 2>&1) || rc=$?
expect_eq "both failing: non-zero, and the caller decides" "100 postgresql-15;postgresql;" "$rc $(installs)"
case "$out" in
  *"apt-get install postgresql failed (exit 100)"*) ok "the failure is logged with its exit status" ;;
  *) fail "the failure is logged with its exit status" "output: $out" ;;
esac

# A second install in the same run does not update again.
reset; FAKE_PKGS="rabbitmq-server"
apt_install rabbitmq-server 2>/dev/null; apt_install rabbitmq-server 2>/dev/null
expect_eq "two installs, one apt-get update" 1 "$(updates)"

# ---------------------------------------------------------------- RabbitMQ's environment
echo "[services_test] rabbit_env: HOME exists before rabbitmqctl, crash dumps stay under it"
RABBIT_DIR="$WORK/fresh/.local/rabbitmq"
(
  cd "$WORK"
  rabbit_env
  [ -d "$HOME" ] && echo "home-exists"
  echo "dump=$ERL_CRASH_DUMP"
) > "$WORK/env.out"
expect_eq "HOME is created" home-exists "$(grep home-exists "$WORK/env.out" || echo missing)"
expect_eq "ERL_CRASH_DUMP under .local/rabbitmq" "dump=$RABBIT_DIR/log/erl_crash.dump" \
  "$(grep '^dump=' "$WORK/env.out")"
RABBIT_DIR="$WORK/never/.local/rabbitmq"
rabbit_bin() { echo /nonexistent; }
rabbit_stop
expect_eq "stop with no .local/rabbitmq creates nothing" absent \
  "$([ -e "$WORK/never" ] && echo present || echo absent)"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
