#!/usr/bin/env bash
# Validates Herald's SRE and deploy artifacts (`make test` and `make check-deploy` run it):
#
#   1. deploy/prometheus/alerts.yml       promtool check rules (syntax, PromQL, templates)
#   2. deploy/prometheus/alerts_test.yml  promtool test rules  (every alert fires / stays quiet)
#   3. every runbook_url anchor in alerts.yml is a heading of docs/operations.md
#   4. deploy/grafana/herald.json         parses as JSON
#   5. scope: every selector of alerts.yml starts with the same matcher (job=~"herald.*"),
#      every query of the dashboard is filtered by its $job and $instance variables, and
#      their "All" means Herald's processes, never `.*` (the ERP's old webhook service
#      exports the same webhook_* names)
#   6. k8s/validate.sh                    the Kubernetes manifests, rendered with kustomize
#   7. shell scripts                      shellcheck, and deploy/local/services_test.sh
#
# Usage: deploy/check.sh        (from any directory; exits non-zero on the first failure)
#
# Installs what is missing from Debian's packages (needs root or sudo): `prometheus` for
# promtool, keeping the package's own Prometheus service from starting, and `shellcheck`;
# k8s/validate.sh installs its own (python3-yaml, a pinned kubectl).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

log() { printf '[check] %s\n' "$*" >&2; }
die() { printf '[check] error: %s\n' "$*" >&2; exit 1; }

# shellcheck source=deploy/lib/apt.sh
. "$ROOT/deploy/lib/apt.sh"

if ! command -v promtool >/dev/null 2>&1; then
  log "promtool not found: installing Debian's prometheus package"
  apt_install prometheus || die "could not install prometheus"
  command -v promtool >/dev/null 2>&1 || die "prometheus installed but promtool is still not on PATH"
fi
if ! command -v shellcheck >/dev/null 2>&1; then
  log "shellcheck not found: installing Debian's shellcheck package"
  apt_install shellcheck || die "could not install shellcheck"
fi
command -v python3 >/dev/null 2>&1 || die "python3 is required"
log "using $(promtool --version 2>&1 | head -n 1), $(shellcheck --version | sed -n 's/^version: /shellcheck /p')"

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

# ---------------------------------------------------------------- scope
# Every metric here is webhook_* or herald_*; each of its selectors must carry the scope.
log "alerts and dashboard are scoped to Herald"
python3 - deploy/prometheus/alerts.yml deploy/grafana/herald.json <<'PY'
import json
import re
import sys

alerts_path, dashboard_path = sys.argv[1], sys.argv[2]
METRIC = re.compile(r"\b((?:webhook|herald)_[a-z0-9_]+)\b(\{[^}]*\})?")
problems = []

# Rules: the first matcher of every selector is one and the same string.
exprs, expr, indent = [], None, None
for line in open(alerts_path, encoding="utf-8"):
    if expr is not None:
        if line.strip() and len(line) - len(line.lstrip()) > indent:
            expr.append(line)
            continue
        exprs.append("".join(expr)); expr = None
    m = re.match(r"^(\s*)expr:\s*(.*)$", line)
    if m:
        indent, rest = len(m.group(1)), m.group(2)
        if rest.strip() in ("|", ">", "|-", ">-"):
            expr = []
        else:
            exprs.append(rest)
if expr is not None:
    exprs.append("".join(expr))
scopes = set()
for e in exprs:
    for name, sel in METRIC.findall(e):
        first = sel[1:-1].split(",")[0].strip() if sel else ""
        if not first:
            problems.append(f"{alerts_path}: {name} has no scope selector in: {' '.join(e.split())}")
        scopes.add(first)
scopes.discard("")
if len(scopes) > 1:
    problems.append(f"{alerts_path}: selectors start with different matchers: {sorted(scopes)}")

# Dashboard: every query filtered by $job and $instance; "All" is never `.*`.
dash = json.load(open(dashboard_path, encoding="utf-8"))
def panels(ps):
    for p in ps:
        yield p
        yield from panels(p.get("panels", []))
for p in panels(dash["panels"]):
    for t in p.get("targets", []):
        for name, sel in METRIC.findall(t.get("expr", "")):
            if 'job=~"$job"' not in sel or 'instance=~"$instance"' not in sel:
                problems.append(f"{dashboard_path}: panel {p.get('title')!r}: {name}{sel} lacks job=~\"$job\", instance=~\"$instance\"")
for v in dash["templating"]["list"]:
    if v["name"] in ("job", "instance") and v.get("allValue") in (".*", ".+"):
        problems.append(f"{dashboard_path}: variable {v['name']} has allValue {v['allValue']!r}: its All would take in other jobs")

if problems:
    sys.exit("\n".join(problems))
print(f"  SUCCESS: {len(exprs)} rules scoped by {', '.join(sorted(scopes))}; every dashboard query by $job and $instance")
PY

# ---------------------------------------------------------------- Kubernetes manifests
log "k8s/validate.sh"
k8s/validate.sh

# ---------------------------------------------------------------- shell scripts
scripts=(deploy/check.sh deploy/local/*.sh deploy/profile/*.sh k8s/*.sh .ci/run)
log "shellcheck ${scripts[*]}"
# Warnings and errors; its "info" and "style" notes (ls over fixed paths, A && B || C
# for a log line) are not worth a failed test.
shellcheck -x --severity=warning "${scripts[@]}"
echo "  SUCCESS: ${#scripts[@]} scripts pass shellcheck"

log "deploy/local/services_test.sh"
deploy/local/services_test.sh

log "all checks passed"
