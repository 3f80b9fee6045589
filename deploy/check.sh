#!/usr/bin/env bash
# Validates Herald's SRE deploy artifacts:
#
#   1. deploy/prometheus/alerts.yml       promtool check rules (syntax, PromQL, templates)
#   2. deploy/prometheus/alerts_test.yml  promtool test rules  (every alert fires / stays quiet)
#   3. every runbook_url anchor in alerts.yml is a heading of docs/operations.md
#   4. deploy/grafana/herald.json         parses as JSON
#
# Usage: deploy/check.sh        (from any directory; exits non-zero on the first failure)
#
# When `promtool` is missing it installs Debian's `prometheus` package (needs root or sudo),
# keeping the package's own Prometheus service from starting.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

log() { printf '[check] %s\n' "$*" >&2; }
die() { printf '[check] error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "need root (or sudo) to run: $*"; fi
}

# ---------------------------------------------------------------- promtool
install_promtool() {
  command -v apt-get >/dev/null 2>&1 || die "promtool not found and no apt-get: install Prometheus' promtool by hand"
  log "promtool not found: installing Debian's prometheus package"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  # policy-rc.d answering 101 ("action forbidden") stops the package's postinst from
  # starting a system-wide Prometheus; only create (and later remove) it if absent.
  local policy=/usr/sbin/policy-rc.d created_policy=""
  if [ ! -e "$policy" ]; then
    as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod +x $policy"
    created_policy=1
  fi
  local rc=0
  as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends prometheus >&2 || rc=$?
  if [ -n "$created_policy" ]; then as_root rm -f "$policy"; fi
  [ "$rc" -eq 0 ] || die "apt-get install prometheus failed (exit $rc)"
  command -v promtool >/dev/null 2>&1 || die "prometheus installed but promtool is still not on PATH"
}

command -v promtool >/dev/null 2>&1 || install_promtool
command -v python3 >/dev/null 2>&1 || die "python3 is required"
log "using $(promtool --version 2>&1 | head -n 1)"

# ---------------------------------------------------------------- alerting rules
log "promtool check rules deploy/prometheus/alerts.yml"
promtool check rules deploy/prometheus/alerts.yml

log "promtool test rules deploy/prometheus/alerts_test.yml"
promtool test rules deploy/prometheus/alerts_test.yml
# promtool only says SUCCESS; say what that covered.
tests=$(grep -c '^  - name:' deploy/prometheus/alerts_test.yml || true)
checks=$(grep -c 'eval_time:' deploy/prometheus/alerts_test.yml || true)
quiet=$(grep -cE '^ +exp_alerts: \[\]$' deploy/prometheus/alerts_test.yml || true)
echo "  $tests rule tests passed: $checks alert evaluations ($((checks - quiet)) firing, $quiet quiet)"

# ---------------------------------------------------------------- runbook anchors
# GitHub's heading anchors: lower case, punctuation other than '-' and '_' dropped,
# spaces turned into '-'. Every runbook_url must point at one of them.
log "runbook_url anchors exist in docs/operations.md"
python3 - deploy/prometheus/alerts.yml docs/operations.md <<'PY'
import re
import sys

alerts_path, doc_path = sys.argv[1], sys.argv[2]

def slug(heading: str) -> str:
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")

anchors = set()
in_fence = False
with open(doc_path, encoding="utf-8") as doc:
    for line in doc:
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        elif not in_fence and (m := re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)):
            anchors.add(slug(m.group(1)))
        # Explicit HTML anchors count too: <a id="..."></a> / <a name="...">.
        anchors.update(re.findall(r'<a\s+(?:id|name)="([^"]+)"', line))

urls = re.findall(r"runbook_url:\s*(\S+)", open(alerts_path, encoding="utf-8").read())
alerts = re.findall(r"^\s*-\s*alert:\s*(\S+)", open(alerts_path, encoding="utf-8").read(), re.M)
if len(urls) != len(alerts):
    sys.exit(f"{len(alerts)} alerts but {len(urls)} runbook_url annotations in {alerts_path}")

missing = []
for url in urls:
    base, _, anchor = url.partition("#")
    if not base.endswith("docs/operations.md") or anchor not in anchors:
        missing.append(url)
if missing:
    sys.exit("runbook_url without a matching heading in %s:\n  %s" % (doc_path, "\n  ".join(missing)))
print(f"  SUCCESS: {len(urls)} runbook_url anchors found in {doc_path}")
PY

# ---------------------------------------------------------------- Grafana dashboard
log "deploy/grafana/herald.json parses"
python3 -m json.tool deploy/grafana/herald.json >/dev/null
echo "  SUCCESS: deploy/grafana/herald.json is valid JSON"

log "all checks passed"
