"""Validate the Kubernetes objects of an environment: the InferenceService and the core objects.

- InferenceService: every field against the KServe SDK's generated models (the API's own OpenAPI
  types, which know every field), unknown fields and wrong types refused; then the rollout invariants.
- Deployment, Service, ConfigMap: ``kubernetes-validate`` in strict mode (unknown fields refused).

Also reads a manifest file into its objects, for every checker.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from model.core.errors import FlywheelError
from model.deploy import manifests

K8S_VERSION = "1.33"  # the Kubernetes minor version the core objects are validated against
CONTAINER_NEEDS = ("resources", "readinessProbe", "livenessProbe")
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


def _runs_as_non_root(spec: dict) -> bool:
    return (spec.get("securityContext") or {}).get("runAsNonRoot") is True


def _container_errors(path: Path, containers: list[dict]) -> list[str]:
    """Each container must say what it needs and how to tell it is alive and ready."""
    errors = []
    for c in containers:
        missing = [k for k in CONTAINER_NEEDS if k not in c]
        if missing:
            errors.append(f"{path}: container {c.get('name')} lacks {', '.join(missing)}")
    return errors


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
    if not _runs_as_non_root(predictor):
        errors.append(f"{path}: spec.predictor.securityContext.runAsNonRoot must be true")
    if predictor.get("minReplicas", 0) > predictor.get("maxReplicas", 0):
        errors.append(f"{path}: minReplicas exceeds maxReplicas")
    logger_url = str((predictor.get("logger") or {}).get("url", ""))
    namespace = manifests.namespace(env)
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
    pod = doc["spec"]["template"]["spec"]
    errors = []
    if not _runs_as_non_root(pod):
        errors.append(f"{path}: Deployment {doc['metadata']['name']}: pod securityContext.runAsNonRoot must be true")
    return errors + _container_errors(path, pod["containers"])
