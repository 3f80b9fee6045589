# Shared by Herald's scripts (deploy/local/services.sh, deploy/check.sh, k8s/validate.sh):
# running as root, and installing Debian packages without starting their services.
# The sourcing script defines `log` and `die` first.
# shellcheck shell=bash

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "need root (or sudo) to run: $*"; fi
}

# apt-get update once per run, before the first look-up or install: on a fresh image the
# package lists are empty, and apt-cache would find nothing.
apt_updated=""
apt_update() {
  [ -n "$apt_updated" ] && return 0
  command -v apt-get >/dev/null 2>&1 || { log "apt-get not found"; return 1; }
  log "apt-get update"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq || { log "apt-get update failed"; return 1; }
  apt_updated=1
}

# Installs Debian packages. Returns non-zero when that fails rather than exiting, so that a
# caller can try another name (`apt_install a || apt_install b || die …`). Called that way,
# `set -e` does not apply inside, so every step checks its own status.
apt_install() {
  apt_update || { log "cannot install $*"; return 1; }
  log "apt-get install $*"
  # Keep the package's own system-wide service from starting: we run a private node.
  local policy=/usr/sbin/policy-rc.d created_policy="" rc=0
  if [ ! -e "$policy" ]; then
    as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod +x $policy" && created_policy=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2 \
    || rc=$?
  if [ -n "$created_policy" ]; then as_root rm -f "$policy"; fi
  [ "$rc" -eq 0 ] || log "apt-get install $* failed (exit $rc)"
  return "$rc"
}

# Whether apt can install a package: `apt-cache policy` names a candidate version.
apt_has() { apt-cache policy "$1" 2>/dev/null | grep -q '^  Candidate: [^(]'; }
