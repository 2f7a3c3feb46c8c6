"""Validate what Argo CD will sync, before it reaches a cluster.

- InferenceService: every field against the KServe SDK's generated models (the API's own OpenAPI
  types, which know every field), unknown fields and wrong types refused; then the rollout invariants.
- Deployment, Service, ConfigMap: ``kubernetes-validate`` in strict mode (unknown fields refused).
- PrometheusRule: the CRD's shape, then ``promtool check rules`` on its groups; the Grafana dashboard's
  queries go through promtool too.
- Argo CD Application and AppProject: the fields documented in Argo CD's user guide
  (application.yaml / project.yaml references), unknown fields refused; and the project limits.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import yaml

from model.core.errors import FlywheelError
from model.deploy import manifests

K8S_VERSION = "1.33"  # the Kubernetes minor version the core objects are validated against
NAMESPACES = {env: f"flywheel-{env}" for env in manifests.ENVIRONMENTS}
_PRIMITIVES = {
    "str": str,
    "int": int,
    "bool": bool,
    "float": (int, float),
    "object": object,
    "datetime": str,
    "date": str,
    "ResourceQuantity": (str, int, float),
}


# ---------------------------------------------------------------- KServe: the SDK's models


def _model_class(name: str):
    import kubernetes.client.models

    from model.core.kserve_sdk import kserve_models

    for module in (kserve_models, kubernetes.client.models):
        if hasattr(module, name):
            return getattr(module, name)
    return None


def kserve_errors(value, type_name: str = "V1beta1InferenceService", where: str = "") -> list[str]:
    """Every unknown field or wrongly typed value in ``value`` read as the KServe SDK type ``type_name``."""
    if value is None:
        return []
    # kserve's generator writes list[X] / dict(str, X); the kubernetes client's, List[X] / Dict[str, X]
    if type_name.lower().startswith("list["):
        if not isinstance(value, list):
            return [f"{where or '.'}: expected a list, got {type(value).__name__}"]
        return [e for i, item in enumerate(value) for e in kserve_errors(item, type_name[5:-1], f"{where}[{i}]")]
    if type_name.lower().startswith(("dict(", "dict[")):
        inner = type_name[5:-1].split(", ", 1)[1]
        if not isinstance(value, dict):
            return [f"{where or '.'}: expected a mapping, got {type(value).__name__}"]
        return [e for k, v in value.items() for e in kserve_errors(v, inner, f"{where}[{k!r}]")]
    if type_name in _PRIMITIVES:
        ok = isinstance(value, _PRIMITIVES[type_name]) and not (
            type_name in ("int", "float") and isinstance(value, bool)
        )
        return [] if ok else [f"{where}: expected {type_name}, got {type(value).__name__} {value!r}"]
    klass = _model_class(type_name)
    if klass is None:
        return [f"{where}: no SDK model named {type_name}"]
    if not isinstance(value, dict):
        return [f"{where}: expected a {type_name} mapping, got {type(value).__name__}"]
    by_json = {json_name: py for py, json_name in klass.attribute_map.items()}
    errors = []
    for key, item in value.items():
        if key not in by_json:
            errors.append(f"{where}.{key}: unknown field (not in {type_name})")
        else:
            errors.extend(kserve_errors(item, klass.openapi_types[by_json[key]], f"{where}.{key}"))
    return errors


def kserve_build(value, type_name: str = "V1beta1InferenceService", where: str = ""):
    """Deserialise ``value`` into the SDK's model objects (after ``kserve_errors`` found nothing).

    Constructing the objects runs the models' own validation: required fields (a probe's
    ``httpGet.port``, a container's ``name``) and value checks the field walk does not know.
    """
    if value is None:
        return None
    if type_name.lower().startswith("list["):
        return [kserve_build(v, type_name[5:-1], f"{where}[{i}]") for i, v in enumerate(value)]
    if type_name.lower().startswith(("dict(", "dict[")):
        inner = type_name[5:-1].split(", ", 1)[1]
        return {k: kserve_build(v, inner, f"{where}[{k!r}]") for k, v in value.items()}
    klass = _model_class(type_name)
    if klass is None:
        return value
    by_json = {json_name: py for py, json_name in klass.attribute_map.items()}
    kwargs = {by_json[k]: kserve_build(v, klass.openapi_types[by_json[k]], f"{where}.{k}") for k, v in value.items()}
    try:
        return klass(**kwargs)
    except (TypeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        raise FlywheelError(f"{where or '.'}: invalid {type_name}: {str(exc).splitlines()[0:3]}") from exc


def check_inferenceservice(doc: dict, path: Path, env: str) -> list[str]:
    errors = [f"{path}: {e}" for e in kserve_errors(doc)]
    if not errors:
        try:
            kserve_build(doc)
        except FlywheelError as exc:
            errors.append(f"{path}: {exc}")
    if doc.get("apiVersion") != "serving.kserve.io/v1beta1":
        errors.append(f"{path}: apiVersion must be serving.kserve.io/v1beta1")
    ann = (doc.get("metadata") or {}).get("annotations") or {}
    if ann.get("serving.kserve.io/deploymentMode", "Serverless") != "Serverless":
        errors.append(
            f"{path}: canary traffic splitting needs serverless mode (serving.kserve.io/deploymentMode: Serverless)"
        )
    predictor = (doc.get("spec") or {}).get("predictor") or {}
    for field in ("minReplicas", "maxReplicas", "logger", "securityContext"):
        if field not in predictor:
            errors.append(f"{path}: spec.predictor.{field} is required by this project")
    if (predictor.get("securityContext") or {}).get("runAsNonRoot") is not True:
        errors.append(f"{path}: spec.predictor.securityContext.runAsNonRoot must be true")
    if predictor.get("minReplicas", 0) > predictor.get("maxReplicas", 0):
        errors.append(f"{path}: minReplicas exceeds maxReplicas")
    logger_url = str((predictor.get("logger") or {}).get("url", ""))
    if f".{NAMESPACES[env]}.svc" not in logger_url:
        errors.append(
            f"{path}: spec.predictor.logger.url must point at the collector in {NAMESPACES[env]}, got {logger_url!r}"
        )
    for c in predictor.get("containers") or []:
        for probe in ("readinessProbe", "livenessProbe", "resources"):
            if probe not in c:
                errors.append(f"{path}: container {c.get('name')} needs {probe}")
    return errors


# ---------------------------------------------------------------- core objects


def check_core(doc: dict, path: Path) -> list[str]:
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        return [f"{path}: {doc.get('kind')} {where}: {exc.message}"]
    except SchemaNotFoundError as exc:
        return [f"{path}: {exc}"]
    errors = []
    if doc.get("kind") == "Deployment":
        pod = doc["spec"]["template"]["spec"]
        if (pod.get("securityContext") or {}).get("runAsNonRoot") is not True:
            errors.append(
                f"{path}: Deployment {doc['metadata']['name']}: pod securityContext.runAsNonRoot must be true"
            )
        for c in pod["containers"]:
            missing = [k for k in ("resources", "readinessProbe", "livenessProbe") if k not in c]
            if missing:
                errors.append(f"{path}: container {c['name']} lacks {', '.join(missing)}")
    return errors


# ---------------------------------------------------------------- Prometheus


def promtool() -> str:
    found = shutil.which("promtool")
    if not found:
        raise FlywheelError("promtool not found on PATH (Debian/Ubuntu: apt-get install prometheus)")
    return found


def run_promtool_rules(groups: dict, label: str) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        rules = Path(tmp) / "rules.yaml"
        rules.write_text(yaml.safe_dump(groups, sort_keys=False))
        done = subprocess.run([promtool(), "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        return [f"{label}: promtool check rules: {(done.stdout + done.stderr).strip()}"]
    return []


def check_prometheusrule(doc: dict, path: Path) -> list[str]:
    errors = []
    if set(doc) - {"apiVersion", "kind", "metadata", "spec"} or set(doc.get("spec") or {}) != {"groups"}:
        errors.append(f"{path}: PrometheusRule takes apiVersion, kind, metadata and spec.groups only")
    if doc.get("apiVersion") != "monitoring.coreos.com/v1":
        errors.append(f"{path}: PrometheusRule apiVersion must be monitoring.coreos.com/v1")
    groups = (doc.get("spec") or {}).get("groups") or []
    alerts = {r.get("alert") for g in groups for r in g.get("rules") or []}
    return (
        errors + run_promtool_rules({"groups": groups}, str(path)) + ([] if alerts else [f"{path}: no alerts defined"])
    )


def dashboard_queries(doc: dict, path: Path) -> list[str]:
    try:
        dashboard = json.loads(next(iter(doc["data"].values())))
    except (KeyError, StopIteration, TypeError, ValueError) as exc:
        raise FlywheelError(f"{path}: the dashboard ConfigMap must hold one JSON document: {exc}") from exc
    return [t["expr"] for p in dashboard.get("panels", []) for t in p.get("targets", [])]


def check_dashboard(doc: dict, path: Path) -> list[str]:
    try:
        queries = dashboard_queries(doc, path)
    except FlywheelError as exc:
        return [str(exc)]
    if not queries:
        return [f"{path}: the dashboard has no queries"]
    # promtool parses PromQL only inside rule files: each query becomes a recording rule
    rules = [{"record": f"flywheel:dashboard_query_{i}", "expr": q} for i, q in enumerate(queries)]
    return run_promtool_rules({"groups": [{"name": "dashboard", "rules": rules}]}, f"{path} (dashboard queries)")


# ---------------------------------------------------------------- Argo CD (documented fields)

# Fields from Argo CD's declarative-setup reference (application.yaml, project.yaml). A dict lists
# the keys a mapping may have; [x] is a list of x; a type is a leaf. Unknown keys are refused.
_META = {"name": str, "namespace": str, "labels": dict, "annotations": dict, "finalizers": [str]}
_SOURCE = {
    "repoURL": str,
    "targetRevision": str,
    "path": str,
    "chart": str,
    "ref": str,
    "directory": {"recurse": bool, "include": str, "exclude": str, "jsonnet": dict},
    "helm": dict,
    "kustomize": dict,
    "plugin": dict,
}
_IGNORE = {
    "group": str,
    "kind": str,
    "name": str,
    "namespace": str,
    "jsonPointers": [str],
    "jqPathExpressions": [str],
    "managedFieldsManagers": [str],
}
APPLICATION = {
    "apiVersion": str,
    "kind": str,
    "metadata": _META,
    "spec": {
        "project": str,
        "source": _SOURCE,
        "sources": [_SOURCE],
        "destination": {"server": str, "name": str, "namespace": str},
        "syncPolicy": {
            "automated": {"prune": bool, "selfHeal": bool, "allowEmpty": bool, "enabled": bool},
            "syncOptions": [str],
            "managedNamespaceMetadata": {"labels": dict, "annotations": dict},
            "retry": {"limit": int, "backoff": {"duration": str, "factor": int, "maxDuration": str}},
        },
        "ignoreDifferences": [_IGNORE],
        "revisionHistoryLimit": int,
        "info": [{"name": str, "value": str}],
    },
}
_RESOURCE = {"group": str, "kind": str}
APPPROJECT = {
    "apiVersion": str,
    "kind": str,
    "metadata": _META,
    "spec": {
        "description": str,
        "sourceRepos": [str],
        "sourceNamespaces": [str],
        "destinations": [{"server": str, "name": str, "namespace": str}],
        "clusterResourceWhitelist": [_RESOURCE],
        "clusterResourceBlacklist": [_RESOURCE],
        "namespaceResourceWhitelist": [_RESOURCE],
        "namespaceResourceBlacklist": [_RESOURCE],
        "roles": [dict],
        "syncWindows": [dict],
        "orphanedResources": dict,
        "signatureKeys": [dict],
        "permitOnlyProjectScopedClusters": bool,
    },
}
SYNC_OPTIONS = re.compile(
    r"^(Validate|CreateNamespace|PrunePropagationPolicy|PruneLast|ApplyOutOfSyncOnly|"
    r"RespectIgnoreDifferences|ServerSideApply|Replace|FailOnSharedResource|Prune|Delete)=\w+$"
)


def fields_errors(value, spec, where: str = "") -> list[str]:
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            return [f"{where or '.'}: expected a mapping"]
        return [
            e
            for k, v in value.items()
            for e in ([f"{where}.{k}: unknown field"] if k not in spec else fields_errors(v, spec[k], f"{where}.{k}"))
        ]
    if isinstance(spec, list):
        if not isinstance(value, list):
            return [f"{where}: expected a list"]
        return [e for i, v in enumerate(value) for e in fields_errors(v, spec[0], f"{where}[{i}]")]
    ok = isinstance(value, spec) and not (spec is int and isinstance(value, bool))
    return [] if ok else [f"{where}: expected {spec.__name__}, got {value!r}"]


def check_argocd(folder: Path, repo: Path) -> list[str]:
    docs = {}
    errors = []
    for path in sorted(folder.glob("*.yaml")):
        for doc in _load_all(path):
            kind = doc.get("kind")
            spec = {"Application": APPLICATION, "AppProject": APPPROJECT}.get(kind)
            if spec is None:
                errors.append(f"{path}: unexpected kind {kind} in argocd/")
                continue
            if doc.get("apiVersion") != "argoproj.io/v1alpha1":
                errors.append(f"{path}: {kind} apiVersion must be argoproj.io/v1alpha1")
            errors += [f"{path}: {kind} {e}" for e in fields_errors(doc, spec)]
            docs.setdefault(kind, []).append((path, doc))
    projects = {d["metadata"]["name"]: d for _, d in docs.get("AppProject", [])}
    if len(projects) != 1:
        return errors + [f"{folder}: expected exactly one AppProject, found {len(projects)}"]
    project = next(iter(projects.values()))["spec"]
    allowed_ns = {d.get("namespace") for d in project.get("destinations", [])}
    if allowed_ns != set(NAMESPACES.values()):
        errors.append(
            f"{folder}: the AppProject must allow exactly {sorted(NAMESPACES.values())}, allows {sorted(allowed_ns)}"
        )
    if len(project.get("sourceRepos", [])) != 1 or "*" in project.get("sourceRepos", []):
        errors.append(f"{folder}: the AppProject must be limited to this one repository")
    by_env = {}
    for path, app in docs.get("Application", []):
        spec = app.get("spec", {})
        env = Path(spec.get("source", {}).get("path", "")).name
        by_env[env] = app
        if spec.get("project") not in projects:
            errors.append(f"{path}: project {spec.get('project')!r} is not defined in {folder}")
        if spec.get("source", {}).get("repoURL") not in project.get("sourceRepos", []):
            errors.append(f"{path}: source.repoURL is not in the project's sourceRepos")
        if spec.get("destination", {}).get("namespace") != NAMESPACES.get(env):
            errors.append(f"{path}: destination namespace must be {NAMESPACES.get(env)} for {env}")
        if not (repo / spec.get("source", {}).get("path", "//missing")).is_dir():
            errors.append(
                f"{path}: source.path {spec.get('source', {}).get('path')!r} is not a folder of this repository"
            )
        automated = spec.get("syncPolicy", {}).get("automated", {})
        if not (automated.get("prune") and automated.get("selfHeal")):
            errors.append(f"{path}: syncPolicy.automated needs prune and selfHeal")
        for option in spec.get("syncPolicy", {}).get("syncOptions", []):
            if not SYNC_OPTIONS.match(str(option)):
                errors.append(f"{path}: unknown sync option {option!r}")
        if not any(d.get("kind") == "InferenceService" for d in spec.get("ignoreDifferences", [])):
            errors.append(f"{path}: ignoreDifferences needs an InferenceService entry (KServe fills in fields itself)")
    missing = set(manifests.ENVIRONMENTS) - set(by_env)
    if missing:
        errors.append(f"{folder}: no Application for {', '.join(sorted(missing))}")
    return errors


# ---------------------------------------------------------------- everything


def _load_all(path: Path) -> list[dict]:
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except (OSError, yaml.YAMLError) as exc:
        raise FlywheelError(f"{path}: cannot read YAML: {exc}") from exc
    for d in docs:
        if not isinstance(d, dict) or "kind" not in d:
            raise FlywheelError(f"{path}: every document must be a Kubernetes object with a kind")
    return docs


def check_environment(folder: Path, env: str) -> list[str]:
    errors, kinds = [], []
    for path in sorted(folder.glob("*.yaml")):
        for doc in _load_all(path):
            kind = doc["kind"]
            kinds.append(kind)
            ns = (doc.get("metadata") or {}).get("namespace")
            if ns != NAMESPACES[env]:
                errors.append(
                    f"{path}: {kind} {doc.get('metadata', {}).get('name')} "
                    f"must be in namespace {NAMESPACES[env]}, not {ns}"
                )
            if kind == "InferenceService":
                errors += check_inferenceservice(doc, path, env)
                try:
                    manifests.read_rollout(path)
                except FlywheelError as exc:
                    errors.append(str(exc))
            elif kind == "PrometheusRule":
                errors += check_prometheusrule(doc, path)
            elif kind in ("Deployment", "Service", "ConfigMap"):
                errors += check_core(doc, path)
                if kind == "ConfigMap" and (doc["metadata"].get("labels") or {}).get("grafana_dashboard"):
                    errors += check_dashboard(doc, path)
            else:
                errors.append(f"{path}: unexpected kind {kind} (the AppProject would refuse to sync it)")
    for needed in ("InferenceService", "Deployment", "Service", "PrometheusRule", "ConfigMap"):
        if needed not in kinds:
            errors.append(f"{folder}: no {needed}")
    return errors


def check_manifests(repo: Path, manifests_dir: str = "manifests") -> list[str]:
    root = Path(repo) / manifests_dir
    errors = []
    for env in manifests.ENVIRONMENTS:
        if not (root / env).is_dir():
            errors.append(f"{root / env}: missing")
            continue
        errors += check_environment(root / env, env)
    errors += check_argocd(root / "argocd", Path(repo))
    return errors


def check_manifests_step(repo: Path, manifests_dir: str = "manifests") -> tuple[dict, str, bool]:
    errors = check_manifests(repo, manifests_dir)
    states = {}
    for env in manifests.ENVIRONMENTS:
        try:
            r = manifests.read_rollout(manifests.isvc_path(repo, env, manifests_dir))
            states[env] = {
                "stable": r.stable and r.stable.version,
                "canary": r.canary and r.canary.version,
                "canary_percent": r.canary_percent,
            }
        except FlywheelError:
            states[env] = None
    lines = ["## Manifest check", ""]
    lines += (
        [f"- {e}" for e in errors]
        if errors
        else [f"All manifests valid (KServe SDK models, Kubernetes {K8S_VERSION} schemas, promtool, Argo CD fields)."]
    )
    lines += ["", "| environment | stable | canary | canary % |", "|---|---|---|---|"]
    lines += [
        f"| {env} | {s and s['stable']} | {s and s['canary']} | {s and s['canary_percent']} |"
        for env, s in states.items()
    ]
    return {"passed": not errors, "errors": errors, "rollout": states}, "\n".join(lines) + "\n", not errors
