"""MLflow tracking and Model Registry: training runs, versions, and the challenger/champion aliases."""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from importlib.metadata import version as pkg_version
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from model.config import PROJECT_ROOT, RegistryConfig, work_dir
from model.errors import FlywheelError
from model.pyfunc_model import ARTIFACT_KEY

CHALLENGER, CHAMPION = "challenger", "champion"
GATE_TAG = "gate"
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "text")]),
    outputs=Schema([ColSpec("string", "intent"), ColSpec("double", "confidence"), ColSpec("boolean", "fallback")]),
)


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else a SQLite file in the work folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{work_dir() / 'mlflow.db'}"


def connect(cfg: RegistryConfig) -> MlflowClient:
    """Point MLflow at the store and make sure the experiment exists (artifacts beside the DB locally)."""
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        work_dir().mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri, uri)
    if client.get_experiment_by_name(cfg.experiment) is None:
        location = (work_dir() / "mlartifacts").as_uri() if uri.startswith("sqlite:") else None
        client.create_experiment(cfg.experiment, artifact_location=location)
    mlflow.set_experiment(cfg.experiment)
    return client


def git_sha() -> str:
    """The commit the code was trained from; "-dirty" when the tree has uncommitted changes."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT, capture_output=True, text=True
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _flatten(prefix: str, values: dict) -> dict:
    out = {}
    for k, v in values.items():
        key = f"{prefix}.{k}" if prefix else k
        out.update(_flatten(key, v) if isinstance(v, dict) else {key: v})
    return out


@contextmanager
def training_run(cfg: RegistryConfig, run_name: str):
    """An MLflow run around training; yields its id. A failure inside marks the run FAILED."""
    connect(cfg)
    with mlflow.start_run(run_name=run_name) as run:
        yield run.info.run_id


def log_training(
    *,
    config: dict,
    dataset: pd.DataFrame,
    dataset_source: str,
    dataset_digest: str,
    sha: str,
    history: list[dict],
    metrics: dict,
    artifact_digest: str,
) -> None:
    """Record config, git SHA, the dataset as input (with its digest), per-epoch and final metrics."""
    mlflow.log_params(_flatten("", config))
    mlflow.set_tags({"git_sha": sha, "dataset_digest": dataset_digest, "artifact_digest": artifact_digest})
    ds = mlflow.data.from_pandas(dataset, source=dataset_source, name="intents", digest=dataset_digest[:32])
    mlflow.log_input(ds, context="training")
    for record in history:
        mlflow.log_metrics({k: v for k, v in record.items() if k not in ("epoch", "steps")}, step=record["epoch"])
    mlflow.log_metrics({k: v for k, v in metrics.items() if v == v})  # NaN-free


def register(cfg: RegistryConfig, artifact_dir: Path, meta: dict, artifact_digest: str) -> dict:
    """Register an artifact as a new version with alias ``challenger``.

    Idempotent: a version with the same git SHA and dataset digest is reused, not duplicated.
    """
    client = connect(cfg)
    sha, digest = meta["git_sha"], meta["dataset_digest"]
    for mv in _versions(client, cfg.model_name):
        if mv.tags.get("git_sha") == sha and mv.tags.get("dataset_digest") == digest:
            client.set_registered_model_alias(cfg.model_name, CHALLENGER, mv.version)
            return {"name": cfg.model_name, "version": int(mv.version), "created": False, "alias": CHALLENGER}
    packages = ("mlflow", "torch", "transformers", "safetensors", "pandas", "onnxruntime")  # onnxruntime: model.onnx
    requirements = [f"{p}=={pkg_version(p)}" for p in packages]
    with mlflow.start_run(run_id=_run_in_store(client, meta.get("mlflow_run_id"))):
        info = mlflow.pyfunc.log_model(
            name="intent_model",
            python_model=str(Path(__file__).with_name("pyfunc_model.py")),
            artifacts={ARTIFACT_KEY: str(artifact_dir)},
            code_paths=[str(Path(__file__).parent)],
            signature=SIGNATURE,
            pip_requirements=requirements,
        )
    # only gated artifacts reach here (register_step refuses others); `flywheel release` checks the tag
    mv = mlflow.register_model(
        info.model_uri,
        cfg.model_name,
        tags={
            "git_sha": sha,
            "dataset_digest": digest,
            "artifact_digest": artifact_digest,
            GATE_TAG: "passed",
        },
    )
    client.set_registered_model_alias(cfg.model_name, CHALLENGER, mv.version)
    return {
        "name": cfg.model_name,
        "version": int(mv.version),
        "created": True,
        "alias": CHALLENGER,
        "model_uri": f"models:/{cfg.model_name}/{mv.version}",
    }


def _run_in_store(client: MlflowClient, run_id: str | None) -> str | None:
    """The training run if this store has it (None starts a new run: trained against another store)."""
    if not run_id:
        return None
    try:
        return client.get_run(run_id).info.run_id
    except MlflowException:
        return None


def _versions(client: MlflowClient, name: str):
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
            f"model '{cfg.model_name}' has no version {version} in the registry at {tracking_uri()}"
        ) from exc
    if mv.tags.get(GATE_TAG) != "passed":
        raise FlywheelError(
            f"{cfg.model_name} v{version} has not passed the gate (tag '{GATE_TAG}' is "
            f"{mv.tags.get(GATE_TAG)!r}); only gated versions may be {action}"
        )
    return mv


def promote(cfg: RegistryConfig, version: int | None = None) -> dict:
    """Move ``champion`` to ``version`` (default: the current challenger)."""
    client = connect(cfg)
    if version is None:
        version = alias_version(cfg, CHALLENGER)
        if version is None:
            raise FlywheelError(f"model '{cfg.model_name}' has no '{CHALLENGER}' version to promote")
    gated_version(client, cfg, version, "promoted to champion")
    previous = alias_version(cfg, CHAMPION)
    client.set_registered_model_alias(cfg.model_name, CHAMPION, str(version))
    return {"name": cfg.model_name, "champion": int(version), "previous_champion": previous}


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


def _artifact_name(local: Path) -> str:
    import yaml

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
