#!/usr/bin/env bash
# Offline checks of Herald's Kubernetes manifests: no cluster needed.
#
#   k8s/validate.sh
#
# 1. Every *.yaml / *.yml file here parses (all documents of multi-document files).
# 2. Every document has apiVersion, kind and metadata.name (a Kustomization:
#    apiVersion and kind), and no two objects share kind/namespace/name.
# 3. kustomization.yaml lists only files that exist.
# 4. References resolve: Deployment selectors match their pod labels; Services,
#    PodDisruptionBudgets, ScaledObjects and HPAs point at existing Deployments;
#    ConfigMap/Secret references name existing objects and keys; probe ports are
#    declared container ports.
# 5. When kubectl is installed, `kubectl kustomize` renders the kustomization.
# Needs python3 with PyYAML (installed with pip when missing).
set -euo pipefail
DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if ! python3 -c 'import yaml' 2>/dev/null; then
  echo "[validate] PyYAML missing: python3 -m pip install pyyaml" >&2
  python3 -m pip install --quiet pyyaml >&2 \
    || python3 -m pip install --quiet --user pyyaml >&2
fi

python3 - "$DIR" <<'PY'
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

count = len(objects) + len(kustomizations)
if errors:
    print("\n".join(f"[validate] FAIL {e}" for e in errors), file=sys.stderr)
    sys.exit(1)
print(f"[validate] {len(files)} files, {count} documents: syntax, required fields and references OK")
PY

if command -v kubectl >/dev/null 2>&1; then
  kubectl kustomize "$DIR" >/dev/null
  echo "[validate] kubectl kustomize: renders OK"
else
  echo "[validate] kubectl not installed: kustomize rendering not checked"
fi
