#!/usr/bin/env bash
# Installs schemathesis (the property-based API fuzzer, from PyPI, pinned) into its own
# virtualenv under .local/tools/, for tests/it/fuzz.rs; idempotent: a second run finds
# it and does nothing. Installs Debian's python3-venv when the system python has no venv.
# Prints the path of the schemathesis executable.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PIN=4.32.5
VENV="$ROOT/.local/tools/schemathesis-$PIN"

log() { echo "[fuzz-tools] $*" >&2; }
die() { log "error: $*"; exit 1; }
# shellcheck source=deploy/lib/apt.sh
. "$ROOT/deploy/lib/apt.sh"

if [ ! -x "$VENV/bin/schemathesis" ]; then
  command -v python3 >/dev/null 2>&1 || apt_install python3 || die "could not install python3"
  if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    log "python3 has no venv: installing Debian's python3-venv"
    apt_install python3-venv || die "could not install python3-venv"
  fi
  # Into a scratch directory first, so that an interrupted install is never taken for a
  # finished one.
  tmp="$VENV.partial"
  rm -rf "$tmp"
  log "installing schemathesis $PIN (PyPI) into ${VENV#"$ROOT"/}"
  python3 -m venv "$tmp" || die "python3 -m venv failed"
  "$tmp/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$PIN" >&2 \
    || die "pip install schemathesis==$PIN failed"
  # A venv's scripts name its directory: move it, then fix their first lines.
  rm -rf "$VENV"
  mv "$tmp" "$VENV"
  grep -rl "$tmp" "$VENV/bin" | xargs sed -i "s|$tmp|$VENV|g"
  "$VENV/bin/schemathesis" --version >/dev/null || die "schemathesis does not run"
fi
echo "$VENV/bin/schemathesis"
