"""Validate what Argo CD will sync, before it reaches a cluster: every environment's folder and the
argocd/ folder under ``manifests/``, each object by the checker for its kind.

- InferenceService, Deployment, Service, ConfigMap: ``model.deploy.kubernetes_checks``
- PrometheusRule and the Grafana dashboard: ``model.deploy.monitoring_checks``
- Argo CD Application and AppProject: ``model.deploy.argocd_checks``
"""

from __future__ import annotations

from pathlib import Path

from model.core.errors import FlywheelError
from model.deploy import manifests
from model.deploy.argocd_checks import check_argocd
from model.deploy.kubernetes_checks import K8S_VERSION, check_core, check_inferenceservice, load_objects
from model.deploy.monitoring_checks import check_dashboard, check_prometheusrule

ENVIRONMENT_KINDS = ("InferenceService", "Deployment", "Service", "PrometheusRule", "ConfigMap")


def _check_object(doc: dict, path: Path, env: str) -> list[str]:
    """What the checker for ``doc``'s kind finds; a kind this project does not deploy is itself an error."""
    kind = doc["kind"]
    if kind == "InferenceService":
        errors = check_inferenceservice(doc, path, env)
        try:
            manifests.read_rollout(path)
        except FlywheelError as exc:
            errors.append(str(exc))
        return errors
    if kind == "PrometheusRule":
        return check_prometheusrule(doc, path)
    if kind not in ENVIRONMENT_KINDS:
        return [f"{path}: unexpected kind {kind} (the AppProject would refuse to sync it)"]
    errors = check_core(doc, path)
    if kind == "ConfigMap" and (doc["metadata"].get("labels") or {}).get("grafana_dashboard"):
        errors += check_dashboard(doc, path)
    return errors


def check_environment(folder: Path, env: str) -> list[str]:
    """One environment's folder: each object in its namespace and valid, and every kind it needs there."""
    errors, kinds = [], []
    namespace = manifests.namespace(env)
    for path in sorted(folder.glob("*.yaml")):
        for doc in load_objects(path):
            kinds.append(doc["kind"])
            ns = (doc.get("metadata") or {}).get("namespace")
            if ns != namespace:
                errors.append(
                    f"{path}: {doc['kind']} {doc.get('metadata', {}).get('name')} "
                    f"must be in namespace {namespace}, not {ns}"
                )
            errors += _check_object(doc, path, env)
    errors += [f"{folder}: no {needed}" for needed in ENVIRONMENT_KINDS if needed not in kinds]
    return errors


def check_manifests(repo: Path, manifests_dir: str = "manifests") -> list[str]:
    """Everything under ``manifests_dir``: an empty list when Argo CD may sync it."""
    root = Path(repo) / manifests_dir
    errors = []
    for env in manifests.ENVIRONMENTS:
        if not (root / env).is_dir():
            errors.append(f"{root / env}: missing")
            continue
        errors += check_environment(root / env, env)
    errors += check_argocd(root / "argocd", Path(repo))
    return errors


def _rollout_state(repo: Path, env: str, manifests_dir: str) -> dict | None:
    try:
        r = manifests.read_rollout(manifests.isvc_path(repo, env, manifests_dir))
    except FlywheelError:
        return None
    return {
        "stable": r.stable and r.stable.version,
        "canary": r.canary and r.canary.version,
        "canary_percent": r.canary_percent,
    }


def check_manifests_step(repo: Path, manifests_dir: str = "manifests") -> tuple[dict, str, bool]:
    """The findings, and what each environment serves, as a result and a markdown summary."""
    errors = check_manifests(repo, manifests_dir)
    states = {env: _rollout_state(repo, env, manifests_dir) for env in manifests.ENVIRONMENTS}
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
