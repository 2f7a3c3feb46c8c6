"""Validate what Argo CD will sync, before it reaches a cluster: every environment's folder and the
argocd/ folder under ``manifests/``, each object by the checker for its kind.

- InferenceService, Deployment, Service, ConfigMap: ``model.deploy.kubernetes_checks``
- PrometheusRule, PodMonitor and the Grafana dashboard: ``model.deploy.monitoring_checks``
- Argo CD Application and AppProject: ``model.deploy.argocd_checks``
- ``training/``, when there: the TrainJob template and the training namespace's access objects
  (``model.deploy.training_checks``)

Across objects: each PodMonitor selects pods of its environment and a port they declare; the predictor
and the collector run one image and a ServiceAccount that can pull it (``model.deploy.image_checks``);
the environments live in namespaces of their own, which the Argo CD Applications and the AppProject
name, run images of one repository and carry one Prometheus release label; and the AppProject allows
every kind the environments hold.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from model.core.errors import FlywheelError
from model.deploy import manifests
from model.deploy.argocd_checks import check_argocd
from model.deploy.image_checks import image_errors, image_repositories, service_account_errors
from model.deploy.kubernetes_checks import K8S_VERSION, check_core, check_inferenceservice, load_objects
from model.deploy.monitoring_checks import (
    MONITORED,
    PROMETHEUS_OPERATOR,
    RELEASE_LABEL,
    check_dashboard,
    check_podmonitor,
    check_prometheusrule,
    podmonitor_target_errors,
)
from model.deploy.training_checks import check_training
from model.deploy.trainjob import TRAINER

ENVIRONMENT_KINDS = (
    *("InferenceService", "Deployment", "Service", "PrometheusRule", "ConfigMap", "PodMonitor", "ServiceAccount"),
)
# the labels KServe puts on an InferenceService's predictor pods (kserve pkg/constants: InferenceServicePodLabelKey,
# KServiceComponentLabel), and the name Knative gives the serving container's port on them (knative/serving
# pkg/apis/serving/v1 UserPortName): a PodMonitor must select those, not the manifest's own labels and port name
KSERVE_POD_LABEL, KSERVE_COMPONENT = "serving.kserve.io/inferenceservice", ("component", "predictor")
KNATIVE_USER_PORT = "user-port"
# the sidecar Knative adds to every revision pod, with its ports as Knative names them (knative/serving
# pkg/reconciler/revision/resources/queue.go: queueNonServingPorts, queueHTTPPort, queueHTTPSPort;
# numbers from pkg/networking/constants.go): http-usermetric serves the request metrics
QUEUE_PROXY = {
    "name": "queue-proxy",
    "ports": [
        {"name": "http-autometric", "containerPort": 9090},
        {"name": "http-usermetric", "containerPort": 9091},
        {"name": "queue-port", "containerPort": 8012},
        {"name": "https-port", "containerPort": 8112},
    ],
}


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
    if kind == "PodMonitor":
        return check_podmonitor(doc, path)
    if kind not in ENVIRONMENT_KINDS:
        return [f"{path}: unexpected kind {kind} (the AppProject would refuse to sync it)"]
    errors = check_core(doc, path)
    if kind == "ConfigMap" and (doc["metadata"].get("labels") or {}).get("grafana_dashboard"):
        errors += check_dashboard(doc, path)
    return errors


def _pods(docs: list[tuple[Path, dict]]) -> list[tuple[str, dict, list[dict]]]:
    """The pods the environment's objects make, as (what, labels, containers) the way the cluster sees them."""
    pods = []
    for _, doc in docs:
        name = (doc.get("metadata") or {}).get("name")
        if doc["kind"] == "Deployment":
            template = (doc.get("spec") or {}).get("template") or {}
            labels = (template.get("metadata") or {}).get("labels") or {}
            pods.append((f"Deployment {name}", labels, (template.get("spec") or {}).get("containers") or []))
        elif doc["kind"] == "InferenceService":
            containers = ((doc.get("spec") or {}).get("predictor") or {}).get("containers") or []
            renamed = [  # Knative keeps the serving container's port number, not its name
                {**c, "ports": [{**p, "name": KNATIVE_USER_PORT} for p in c.get("ports") or []]} for c in containers
            ]
            labels = {KSERVE_POD_LABEL: name, KSERVE_COMPONENT[0]: KSERVE_COMPONENT[1]}
            pods.append((f"InferenceService {name}'s predictor", labels, [*renamed, QUEUE_PROXY]))
    return pods


def check_environment(folder: Path, env: str) -> list[str]:
    """One environment's folder: every object in its InferenceService's namespace and valid, every kind it
    needs there, PodMonitors that find their pods, one image and a ServiceAccount that can pull it."""
    errors, docs = [], []
    for path in sorted(folder.glob("*.yaml")):
        docs += [(path, doc) for doc in load_objects(path)]
    kinds = [doc["kind"] for _, doc in docs]
    namespace = next((d.get("metadata", {}).get("namespace") for _, d in docs if d["kind"] == "InferenceService"), None)
    for path, doc in docs:
        ns = (doc.get("metadata") or {}).get("namespace")
        if ns != namespace:
            errors.append(
                f"{path}: {doc['kind']} {doc.get('metadata', {}).get('name')} "
                f"must be in namespace {namespace} (its InferenceService's), not {ns}"
            )
        errors += _check_object(doc, path, env)
    errors += [f"{folder}: no {needed}" for needed in ENVIRONMENT_KINDS if needed not in kinds]
    pods = _pods(docs)
    for path, doc in docs:
        if doc["kind"] == "PodMonitor" and doc.get("metadata"):
            errors += podmonitor_target_errors(doc, pods, path)
    return errors + image_errors(docs) + service_account_errors(docs)


def _group_kinds(folder: Path) -> set[tuple[str, str]]:
    """(API group, kind) of every object in ``folder``."""
    return {
        (d.get("apiVersion", "").rpartition("/")[0], d["kind"])
        for p in sorted(folder.glob("*.yaml"))
        for d in load_objects(p)
    }


def _project_kind_errors(root: Path) -> list[str]:
    """Every kind the environments hold must be in the AppProject's namespaceResourceWhitelist."""
    try:
        projects = [
            d for p in sorted((root / "argocd").glob("*.yaml")) for d in load_objects(p) if d["kind"] == "AppProject"
        ]
    except FlywheelError as exc:
        return [str(exc)]
    if len(projects) != 1:
        return []  # check_argocd names that
    allowed = {
        (r.get("group"), r.get("kind")) for r in (projects[0].get("spec") or {}).get("namespaceResourceWhitelist") or []
    }
    held = set().union(*(_group_kinds(root / env) for env in manifests.ENVIRONMENTS if (root / env).is_dir()))
    return [
        f"{root / 'argocd'}: the AppProject's namespaceResourceWhitelist lacks {kind} (group {group or 'core'!r})"
        for group, kind in sorted(held - allowed)
    ]


def _namespaces(root: Path) -> dict[str, str]:
    """Environment -> the namespace its InferenceService names (where that file can be read)."""
    found = {}
    for env in manifests.ENVIRONMENTS:
        with suppress(FlywheelError):  # check_environment names what is wrong with it
            found[env] = manifests.namespace_of(root / env / manifests.ISVC_FILE)
    return found


def _across_environments(root: Path, namespaces: dict[str, str]) -> list[str]:
    """The environments live apart, run images of one repository, and are selected by one Prometheus."""
    errors = []
    if len(set(namespaces.values())) < len(namespaces):
        errors.append(f"{root}: the environments must live in different namespaces, got {namespaces}")
    docs = [(p, d) for env in namespaces for p in sorted((root / env).glob("*.yaml")) for d in load_objects(p)]
    repositories = image_repositories(docs)
    if len(repositories) > 1:
        errors.append(f"{root}: the environments run images of {sorted(repositories)}: a release carries one forward")
    labels = [(d.get("metadata") or {}).get("labels") or {} for _, d in docs if d["kind"] in MONITORED]
    releases = {str(found.get(RELEASE_LABEL)) for found in labels}
    if len(releases) > 1:
        errors.append(
            f"{root}: PodMonitors and PrometheusRules carry different labels {RELEASE_LABEL} ({sorted(releases)}): "
            "one kube-prometheus-stack release selects them all (flywheel init --prometheus-release sets it)"
        )
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
    namespaces = _namespaces(root)
    errors += _across_environments(root, namespaces) + check_argocd(root / "argocd", Path(repo), namespaces)
    if (root / "training").is_dir():  # the optional training backend's (docs/cluster.md)
        errors += check_training(root / "training")
    return errors + _project_kind_errors(root)


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


@dataclass(frozen=True)
class ManifestCheck:
    passed: bool
    errors: list[str]  # one sentence per finding, naming the file
    rollout: dict[str, dict | None]  # per environment: stable, canary, canary_percent (None: unreadable)


def check_manifests_step(repo: Path, manifests_dir: str = "manifests") -> tuple[ManifestCheck, str, bool]:
    """The findings, and what each environment serves, as a result and a markdown summary."""
    errors = check_manifests(repo, manifests_dir)
    states = {env: _rollout_state(repo, env, manifests_dir) for env in manifests.ENVIRONMENTS}
    lines = ["## Manifest check", ""]
    lines += (
        [f"- {e}" for e in errors]
        if errors
        else [
            f"All manifests valid (KServe SDK models, Kubernetes {K8S_VERSION} schemas, prometheus-operator "
            f"{PROMETHEUS_OPERATOR} CRD schemas, Kubeflow Trainer {TRAINER} TrainJob schema, promtool, Argo CD "
            "fields)."
        ]
    )
    lines += ["", "| environment | stable | canary | canary % |", "|---|---|---|---|"]
    lines += [
        f"| {env} | {s and s['stable']} | {s and s['canary']} | {s and s['canary_percent']} |"
        for env, s in states.items()
    ]
    return ManifestCheck(not errors, errors, states), "\n".join(lines) + "\n", not errors
