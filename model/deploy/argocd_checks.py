"""Validate the Argo CD objects: Application and AppProject against the fields documented in Argo CD's
user guide (application.yaml / project.yaml references), unknown fields refused; then the limits
this project sets (one repository, the environments' namespaces, automated sync that heals)."""

from __future__ import annotations

import re
from pathlib import Path

from model.deploy import manifests
from model.deploy.kubernetes_checks import load_objects, of_type

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
SPEC_OF_KIND = {"Application": APPLICATION, "AppProject": APPPROJECT}
SYNC_OPTIONS = re.compile(
    r"^(Validate|CreateNamespace|PrunePropagationPolicy|PruneLast|ApplyOutOfSyncOnly|"
    r"RespectIgnoreDifferences|ServerSideApply|Replace|FailOnSharedResource|Prune|Delete)=\w+$"
)


def fields_errors(value, spec, where: str = "") -> list[str]:
    """Every key of ``value`` that ``spec`` does not list, and every value of the wrong type."""
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
    return [] if of_type(value, spec) else [f"{where}: expected {spec.__name__}, got {value!r}"]


def _read_objects(folder: Path) -> tuple[dict[str, list[tuple[Path, dict]]], list[str]]:
    """The folder's objects by kind, each with its file, and what is wrong with their fields."""
    by_kind: dict[str, list[tuple[Path, dict]]] = {}
    errors = []
    for path in sorted(folder.glob("*.yaml")):
        for doc in load_objects(path):
            kind = doc.get("kind")
            spec = SPEC_OF_KIND.get(kind)
            if spec is None:
                errors.append(f"{path}: unexpected kind {kind} in argocd/")
                continue
            if doc.get("apiVersion") != "argoproj.io/v1alpha1":
                errors.append(f"{path}: {kind} apiVersion must be argoproj.io/v1alpha1")
            errors += [f"{path}: {kind} {e}" for e in fields_errors(doc, spec)]
            by_kind.setdefault(kind, []).append((path, doc))
    return by_kind, errors


def _project_errors(project: dict, folder: Path, namespaces: dict[str, str]) -> list[str]:
    """The AppProject may deploy only this repository, only to the environments' namespaces."""
    errors = []
    wanted = set(namespaces.values())
    allowed = {d.get("namespace") for d in project.get("destinations", [])}
    if len(namespaces) == len(manifests.ENVIRONMENTS) and allowed != wanted:  # else check_environment says why
        errors.append(f"{folder}: the AppProject must allow exactly {sorted(wanted)}, allows {sorted(allowed)}")
    if len(project.get("sourceRepos", [])) != 1 or "*" in project.get("sourceRepos", []):
        errors.append(f"{folder}: the AppProject must be limited to this one repository")
    return errors


def _application_errors(
    path: Path, app: dict, projects: dict, project: dict, repo: Path, namespaces: dict[str, str]
) -> list[str]:
    """One environment's Application: in the project, from this repository, into its namespace, self-healing."""
    errors = []
    spec = app.get("spec", {})
    source = spec.get("source", {})
    env = Path(source.get("path", "")).name
    if spec.get("project") not in projects:
        errors.append(f"{path}: project {spec.get('project')!r} is not defined in {path.parent}")
    if source.get("repoURL") not in project.get("sourceRepos", []):
        errors.append(f"{path}: source.repoURL is not in the project's sourceRepos")
    namespace = namespaces.get(env)  # None where the environment's InferenceService cannot be read: named there
    if namespace and spec.get("destination", {}).get("namespace") != namespace:
        errors.append(f"{path}: destination namespace must be {namespace} for {env} (its InferenceService's)")
    if not (repo / source.get("path", "//missing")).is_dir():
        errors.append(f"{path}: source.path {source.get('path')!r} is not a folder of this repository")
    automated = spec.get("syncPolicy", {}).get("automated", {})
    if not (automated.get("prune") and automated.get("selfHeal")):
        errors.append(f"{path}: syncPolicy.automated needs prune and selfHeal")
    for option in spec.get("syncPolicy", {}).get("syncOptions", []):
        if not SYNC_OPTIONS.match(str(option)):
            errors.append(f"{path}: unknown sync option {option!r}")
    if not any(d.get("kind") == "InferenceService" for d in spec.get("ignoreDifferences", [])):
        errors.append(f"{path}: ignoreDifferences needs an InferenceService entry (KServe fills in fields itself)")
    return errors


def check_argocd(folder: Path, repo: Path, namespaces: dict[str, str]) -> list[str]:
    """The argocd/ folder: one AppProject, and an Application for every environment, into ``namespaces``
    (environment -> the namespace its InferenceService names)."""
    by_kind, errors = _read_objects(folder)
    projects = {d["metadata"]["name"]: d for _, d in by_kind.get("AppProject", [])}
    if len(projects) != 1:
        return errors + [f"{folder}: expected exactly one AppProject, found {len(projects)}"]
    project = next(iter(projects.values()))["spec"]
    errors += _project_errors(project, folder, namespaces)
    applications = by_kind.get("Application", [])
    for path, app in applications:
        errors += _application_errors(path, app, projects, project, repo, namespaces)
    deployed = {Path(app.get("spec", {}).get("source", {}).get("path", "")).name for _, app in applications}
    missing = set(manifests.ENVIRONMENTS) - deployed
    if missing:
        errors.append(f"{folder}: no Application for {', '.join(sorted(missing))}")
    return errors
