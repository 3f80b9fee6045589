#!/usr/bin/env bash
# Runs Herald under heaptrack while keeping its process id, so herald-bench (which
# samples /proc/<pid> and stops Herald with SIGTERM) sees Herald itself:
#   herald-bench --herald deploy/profile/heaptrack-herald.sh …
# The binary must be built without mimalloc (`cargo build --release
# --no-default-features --bin herald`), whose allocations heaptrack cannot see; it is
# taken from $HERALD_HEAP_BINARY. Profiles go to $HERALD_HEAP_DIR (one per process,
# herald.<pid>.zst or .gz); read one with `heaptrack_print -f <file>`.
set -euo pipefail

binary=${HERALD_HEAP_BINARY:?set HERALD_HEAP_BINARY to a herald built with --no-default-features}
dir=${HERALD_HEAP_DIR:-target/heap}
lib=/usr/lib/heaptrack
command -v heaptrack >/dev/null || { echo "heaptrack missing: apt-get install -y heaptrack" >&2; exit 1; }

# `herald migrate` needs no profile.
if [[ ${1:-} != serve ]]; then exec "$binary" "$@"; fi

mkdir -p "$dir"
pipe=$(mktemp -u /tmp/herald-heaptrack.XXXXXX)
mkfifo "$pipe"
if command -v zstd >/dev/null; then compress=(zstd -q -c) suffix=zst; else compress=(gzip -c) suffix=gz; fi
# The interpreter reads the pipe until Herald exits; it outlives this script's exec.
( "$lib/libexec/heaptrack_interpret" <"$pipe" | "${compress[@]}" >"$dir/herald.$$.$suffix"; rm -f "$pipe" ) &
LD_PRELOAD="$lib/libheaptrack_preload.so" DUMP_HEAPTRACK_OUTPUT="$pipe" exec "$binary" "$@"
