"""Validate the Kubernetes objects of an environment: the InferenceService and the core objects.

- InferenceService: every field against the KServe SDK's generated models (the API's own OpenAPI
  types, which know every field), unknown fields and wrong types refused; then the rollout invariants,
  Knative mode, and nothing in the predictor's PodSpec that needs a Knative feature flag that is off
  by default (a pod-level ``securityContext`` above all).
- Deployment, Service, ConfigMap: ``kubernetes-validate`` in strict mode (unknown fields refused).
- Every container (predictor and collector): resources, probes, and its own hardened
  ``securityContext`` (non-root uid/gid, no privilege escalation, capabilities dropped, read-only
  root filesystem, RuntimeDefault seccomp).

Also reads a manifest file into its objects, for every checker.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from model.core.errors import FlywheelError

K8S_VERSION = "1.33"  # the Kubernetes minor version the core objects are validated against
CONTAINER_NEEDS = ("resources", "readinessProbe", "livenessProbe")
DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"
# kserve pkg/constants/constants.go: "Knative" since KServe 0.16, "Serverless" its deprecated spelling
# (KServe's defaulting webhook rewrites it to Knative)
KNATIVE_MODES = ("Knative", "Serverless")
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


def load_objects(path: Path) -> list[dict]:
    """The Kubernetes objects in a YAML file (one per document); FlywheelError for anything else."""
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except (OSError, yaml.YAMLError) as exc:
        raise FlywheelError(f"{path}: cannot read YAML: {exc}") from exc
    for d in docs:
        if not isinstance(d, dict) or "kind" not in d:
            raise FlywheelError(f"{path}: every document must be a Kubernetes object with a kind")
    return docs


def of_type(value, expected: type | tuple[type, ...]) -> bool:
    """``isinstance``, except that YAML's true/false is no number (Python counts bool as an int)."""
    wants_number = expected in (int, float, (int, float))
    return isinstance(value, expected) and not (wants_number and isinstance(value, bool))


# ---------------------------------------------------------------- KServe: the SDK's models


def _model_class(name: str):
    # kserve and the Kubernetes client take seconds to import: only the steps that check a manifest load them
    import kubernetes.client.models

    from model.core.kserve_sdk import kserve_models

    for module in (kserve_models, kubernetes.client.models):
        if hasattr(module, name):
            return getattr(module, name)
    return None


def _container_type(type_name: str) -> tuple[str, str] | None:
    """``("list", X)`` or ``("dict", X)`` for a container type name, else None.

    kserve's generator writes list[X] / dict(str, X); the kubernetes client's, List[X] / Dict[str, X].
    """
    lowered = type_name.lower()
    if lowered.startswith("list["):
        return "list", type_name[5:-1]
    if lowered.startswith(("dict(", "dict[")):
        return "dict", type_name[5:-1].split(", ", 1)[1]
    return None


def kserve_errors(value, type_name: str = "V1beta1InferenceService", where: str = "") -> list[str]:
    """Every unknown field or wrongly typed value in ``value`` read as the KServe SDK type ``type_name``."""
    if value is None:
        return []
    container = _container_type(type_name)
    if container and container[0] == "list":
        if not isinstance(value, list):
            return [f"{where or '.'}: expected a list, got {type(value).__name__}"]
        return [e for i, item in enumerate(value) for e in kserve_errors(item, container[1], f"{where}[{i}]")]
    if container:
        if not isinstance(value, dict):
            return [f"{where or '.'}: expected a mapping, got {type(value).__name__}"]
        return [e for k, v in value.items() for e in kserve_errors(v, container[1], f"{where}[{k!r}]")]
    if type_name in _PRIMITIVES:
        ok = of_type(value, _PRIMITIVES[type_name])
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
    container = _container_type(type_name)
    if container and container[0] == "list":
        return [kserve_build(v, container[1], f"{where}[{i}]") for i, v in enumerate(value)]
    if container:
        return {k: kserve_build(v, container[1], f"{where}[{k!r}]") for k, v in value.items()}
    klass = _model_class(type_name)
    if klass is None:
        return value
    by_json = {json_name: py for py, json_name in klass.attribute_map.items()}
    kwargs = {by_json[k]: kserve_build(v, klass.openapi_types[by_json[k]], f"{where}.{k}") for k, v in value.items()}
    try:
        return klass(**kwargs)
    except (TypeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        raise FlywheelError(f"{where or '.'}: invalid {type_name}: {str(exc).splitlines()[0:3]}") from exc


# ---------------------------------------------------------------- pods: what runs, and with which rights

# Knative refuses these PodSpec fields of a revision unless a feature flag in knative-serving's
# config-features is enabled, and every one of them is disabled by default (knative/serving
# config/core/configmaps/features.yaml; the masks in pkg/apis/serving/fieldmask.go). KServe passes
# spec.predictor through as that PodSpec. A manifest using one fails on a cluster left at defaults.
KNATIVE_FLAG_OF_POD_FIELD = {
    "securityContext": "kubernetes.podspec-securitycontext",
    "affinity": "kubernetes.podspec-affinity",
    "topologySpreadConstraints": "kubernetes.podspec-topologyspreadconstraints",
    "hostAliases": "kubernetes.podspec-hostaliases",
    "nodeSelector": "kubernetes.podspec-nodeselector",
    "tolerations": "kubernetes.podspec-tolerations",
    "runtimeClassName": "kubernetes.podspec-runtimeclassname",
    "dnsPolicy": "kubernetes.podspec-dnspolicy",
    "dnsConfig": "kubernetes.podspec-dnsconfig",
    "shareProcessNamespace": "kubernetes.podspec-shareprocessnamespace",
    "hostIPC": "kubernetes.podspec-hostipc",
    "hostPID": "kubernetes.podspec-hostpid",
    "hostNetwork": "kubernetes.podspec-hostnetwork",
    "priorityClassName": "kubernetes.podspec-priorityclassname",
    "schedulerName": "kubernetes.podspec-schedulername",
    "initContainers": "kubernetes.podspec-init-containers",
}
KNATIVE_FLAG_OF_VOLUME = {  # emptyDir, configMap, secret, projected and downwardAPI need no flag
    "hostPath": "kubernetes.podspec-volumes-hostpath",
    "persistentVolumeClaim": "kubernetes.podspec-persistent-volume-claim",
    "ephemeral": "kubernetes.podspec-volumes-ephemeral",
    "csi": "kubernetes.podspec-volumes-csi",
    "image": "kubernetes.podspec-volumes-image",
}
# Every container's own securityContext: non-root, no privilege escalation, no capabilities, a
# read-only root filesystem and the runtime's default seccomp profile. Container level because
# Knative accepts all of these there by default (fieldmask.go, SecurityContextMask).
CONTAINER_SECURITY = {"runAsNonRoot": True, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True}


def security_errors(path: Path, c: dict) -> list[str]:
    """What ``c``'s own securityContext lacks of this project's hardening."""
    sc = c.get("securityContext") or {}
    where = f"{path}: container {c.get('name')} securityContext"
    errors = [f"{where}.{k} must be {str(v).lower()}" for k, v in CONTAINER_SECURITY.items() if sc.get(k) is not v]
    for key in ("runAsUser", "runAsGroup"):
        if not (of_type(sc.get(key), int) and sc[key] > 0):
            errors.append(f"{where}.{key} must be a non-root id (a number > 0), got {sc.get(key)!r}")
    capabilities = sc.get("capabilities") or {}
    if "ALL" not in (capabilities.get("drop") or []):
        errors.append(f"{where}.capabilities.drop must include ALL")
    if capabilities.get("add"):
        errors.append(f"{where}.capabilities.add must be empty (Knative: kubernetes.containerspec-addcapabilities)")
    if (sc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        errors.append(f"{where}.seccompProfile.type must be RuntimeDefault")
    if sc.get("privileged"):
        errors.append(f"{where}.privileged must not be true")
    return errors


def _container_errors(path: Path, containers: list[dict]) -> list[str]:
    """Each container must say what it needs, how to tell it is alive and ready, and run hardened."""
    errors = []
    for c in containers:
        missing = [k for k in CONTAINER_NEEDS if k not in c]
        if missing:
            errors.append(f"{path}: container {c.get('name')} lacks {', '.join(missing)}")
        errors += security_errors(path, c)
    return errors


def knative_flag_errors(path: Path, pod: dict) -> list[str]:
    """What in ``pod`` (a Knative revision's PodSpec) needs a Knative feature flag that is off by default."""
    errors = [
        f"{path}: spec.predictor.{field} needs Knative's feature flag {flag} (disabled by default)"
        + (": set runAsUser, seccompProfile etc. on each container instead" if field == "securityContext" else "")
        for field, flag in KNATIVE_FLAG_OF_POD_FIELD.items()
        if pod.get(field)  # a zero value (false, {}, []) is what Knative's masks leave, so it passes
    ]
    for volume in pod.get("volumes") or []:
        errors += [
            f"{path}: volume {volume.get('name')}: {kind} needs Knative's feature flag {flag} (disabled by default)"
            for kind, flag in KNATIVE_FLAG_OF_VOLUME.items()
            if kind in volume
        ]
    for c in pod.get("containers") or []:
        for e in c.get("env") or []:
            source = e.get("valueFrom") or {}
            if "fieldRef" in source or "resourceFieldRef" in source:
                errors.append(
                    f"{path}: container {c.get('name')} env {e.get('name')}: fieldRef/resourceFieldRef need "
                    "Knative's feature flag kubernetes.podspec-fieldref (disabled by default)"
                )
    return errors


ARGOCD_SYNC_OPTIONS = "argocd.argoproj.io/sync-options"  # Argo CD docs/user-guide/sync-options.md


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
    mode = ann.get(DEPLOYMENT_MODE)
    if mode not in KNATIVE_MODES:
        # unset, KServe takes the cluster's default (inferenceservice-config deploy.defaultDeploymentMode),
        # which is Standard (no Knative, no canary split) on current KServe
        errors.append(
            f"{path}: canary traffic splitting needs Knative mode ({DEPLOYMENT_MODE}: Knative; "
            f"Serverless is its deprecated name), got {mode!r}"
        )
    sync_options = {o.strip() for o in str(ann.get(ARGOCD_SYNC_OPTIONS, "")).split(",")}
    if not {"Delete=false", "Prune=false"} <= sync_options:
        # KServe keeps the stable share only in status.components.predictor.latestRolledoutRevision
        # (kserve ksvc_reconciler.go): a recreated InferenceService gives a running canary 100%
        errors.append(
            f"{path}: annotation {ARGOCD_SYNC_OPTIONS} must include Delete=false and Prune=false: an "
            "InferenceService deleted and recreated mid-canary sends the canary 100% (KServe keeps the stable "
            "share only in its status); finish a canary (promote or roll back) before restoring a cluster"
        )
    predictor = (doc.get("spec") or {}).get("predictor") or {}
    for field in ("minReplicas", "maxReplicas", "logger"):
        if field not in predictor:
            errors.append(f"{path}: spec.predictor.{field} is required by this project")
    errors += knative_flag_errors(path, predictor)
    if predictor.get("minReplicas", 0) > predictor.get("maxReplicas", 0):
        errors.append(f"{path}: minReplicas exceeds maxReplicas")
    logger_url = str((predictor.get("logger") or {}).get("url", ""))
    namespace = (doc.get("metadata") or {}).get("namespace")  # check_environment holds the rest to it
    if f".{namespace}.svc" not in logger_url:
        errors.append(
            f"{path}: spec.predictor.logger.url must point at the collector in {namespace}, got {logger_url!r}"
        )
    return errors + _container_errors(path, predictor.get("containers") or [])


# ---------------------------------------------------------------- core objects


def check_core(doc: dict, path: Path) -> list[str]:
    # kubernetes-validate loads its schema machinery for seconds: only check-manifests needs it
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        return [f"{path}: {doc.get('kind')} {where}: {exc.message}"]
    except SchemaNotFoundError as exc:
        return [f"{path}: {exc}"]
    if doc.get("kind") != "Deployment":
        return []
    # not Knative: a pod-level securityContext is allowed here; each container still carries its own
    return _container_errors(path, doc["spec"]["template"]["spec"]["containers"])
