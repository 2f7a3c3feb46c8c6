"""MLflow Model Registry, read side: versions of the intent model, the challenger/champion aliases, the
sealed artifact behind each version (fetched for a predictor by ``fetch_model``), and opening a model
from a folder or a ``models:/`` URI."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from model.core.config import RegistryConfig
from model.core.errors import FlywheelError
from model.registry.store import connect, tracking_uri

if TYPE_CHECKING:  # for the annotation only: open_model imports it when it runs
    from model.artifact.predictor import IntentPredictor

CHALLENGER, CHAMPION = "challenger", "champion"
ARTIFACT_KEY = "intent_model"  # the artifact folder's name among the MLflow model's artifacts
GATE_TAG = "gate"
MODEL_URI = re.compile(r"models:/([^/@]+)(?:/(\d+)|@(.+))")  # models:/<name>/<version> or models:/<name>@<alias>


def all_versions(client: MlflowClient, name: str):
    try:
        return client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return []


def alias_version(cfg: RegistryConfig, alias: str) -> int | None:
    client = connect(cfg)
    try:
        return int(client.get_model_version_by_alias(cfg.model_name, alias).version)
    except MlflowException:
        return None


def gated_version(client: MlflowClient, cfg: RegistryConfig, version: int, action: str):
    """Version ``version``, if it is registered and passed the gate; else FlywheelError saying so."""
    try:
        mv = client.get_model_version(cfg.model_name, str(version))
    except MlflowException as exc:
        raise FlywheelError(
            f"model '{cfg.model_name}' has no version {version} in the registry at {tracking_uri(cfg)}"
        ) from exc
    if mv.tags.get(GATE_TAG) != "passed":
        raise FlywheelError(
            f"{cfg.model_name} v{version} has not passed the gate (tag '{GATE_TAG}' is "
            f"{mv.tags.get(GATE_TAG)!r}); only gated versions may be {action}"
        )
    return mv


def download_artifact(cfg: RegistryConfig, model_uri: str) -> Path:
    """The local artifact folder behind ``models:/name@alias`` or ``models:/name/N``."""
    connect(cfg)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
    except MlflowException as exc:
        raise FlywheelError(f"cannot fetch {model_uri}: {exc.message}") from exc
    folder = local / "artifacts" / Path(_artifact_name(local))
    if not folder.is_dir():
        raise FlywheelError(f"{model_uri}: no intent artifact inside (looked for {folder})")
    return folder


def fetch_model(cfg: RegistryConfig, model_uri: str) -> tuple[Path, int]:
    """The local artifact folder behind a ``models:/`` URI and the version it names (an alias read now):
    what a predictor needs before it starts, as KServe's storage initializer fetches a storage URI."""
    match = MODEL_URI.fullmatch(model_uri)
    if match is None:
        raise FlywheelError(f"{model_uri!r} is not models:/<name>/<version> or models:/<name>@<alias>")
    name, number, alias = match.groups()
    folder = download_artifact(cfg, model_uri)
    version = int(number) if number else alias_version(replace(cfg, model_name=name), alias)
    if version is None:  # the alias moved away between the download and now
        raise FlywheelError(f"{model_uri}: model '{name}' has no alias '{alias}'")
    return folder, version


def _artifact_name(local: Path) -> str:
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    path = mlmodel["flavors"]["python_function"]["artifacts"][ARTIFACT_KEY]["path"]
    return Path(path).name


def resolve_version(cfg: RegistryConfig, version: int) -> dict:
    """Where version N's sealed artifact lives (an immutable URI in the artifact store) and its digest.

    Refuses a version that is not registered or did not pass the gate.
    """
    client = connect(cfg)
    mv = gated_version(client, cfg, version, "released")
    digest = mv.tags.get("artifact_digest", "")
    if len(digest) != 64:
        raise FlywheelError(f"{cfg.model_name} v{version} has no artifact_digest tag; cannot pin what would be served")
    base = client.get_model_version_download_uri(cfg.model_name, str(version)).rstrip("/")
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{base}/MLmodel"))
    except MlflowException as exc:
        raise FlywheelError(f"{cfg.model_name} v{version}: cannot read its MLmodel at {base}: {exc.message}") from exc
    storage_uri = f"{base}/artifacts/{_artifact_name(local.parent)}"
    metrics = {}
    if mv.run_id:
        try:
            metrics = dict(client.get_run(mv.run_id).data.metrics)
        except MlflowException:
            pass
    return {
        "version": int(version),
        "storage_uri": storage_uri,
        "sha256": digest,
        "run_id": mv.run_id,
        "git_sha": mv.tags.get("git_sha"),
        "dataset_digest": mv.tags.get("dataset_digest"),
        "metrics": metrics,
    }


def open_model(model: str, reg_cfg: RegistryConfig, runtime: str = "onnx") -> IntentPredictor:
    """A predictor from an artifact folder or an MLflow ``models:/`` URI (runtime: see IntentPredictor.load)."""
    # the predictor brings PyTorch, seconds to import: the delivery steps read versions and run no model
    from model.artifact.predictor import IntentPredictor

    folder = download_artifact(reg_cfg, model) if model.startswith("models:/") else Path(model)
    return IntentPredictor.load(folder, runtime=runtime)
