"""MLflow tracking: the training run with its config, dataset, metrics and git SHA."""

from __future__ import annotations

from contextlib import contextmanager

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException

from model.core.config import PROJECT_ROOT, RegistryConfig
from model.core.errors import FlywheelError
from model.core.git import git
from model.registry.store import connect


def git_sha() -> str:
    """The commit the code was trained from; "-dirty" when the tree has uncommitted changes."""
    try:
        sha = git(PROJECT_ROOT, "rev-parse", "HEAD").strip()
        dirty = git(PROJECT_ROOT, "status", "--porcelain", "--untracked-files=no").strip()
    except (OSError, FlywheelError):  # no git, or not a checkout (an installed package)
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def _flatten(prefix: str, values: dict) -> dict:
    out = {}
    for k, v in values.items():
        key = f"{prefix}.{k}" if prefix else k
        out.update(_flatten(key, v) if isinstance(v, dict) else {key: v})
    return out


@contextmanager
def training_run(cfg: RegistryConfig, run_name: str, run_id: str | None = None):
    """An MLflow run around training; yields its id. A failure inside marks the run FAILED.

    ``run_id``: go on with that run (training resumed from a checkpoint after its process was killed,
    leaving the run RUNNING) rather than start another; a run this store does not hold starts afresh."""
    connect(cfg)
    if run_id is not None and not _exists(run_id):
        run_id = None
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name) as run:
        yield run.info.run_id


def _exists(run_id: str) -> bool:
    try:
        mlflow.get_run(run_id)
    except MlflowException:
        return False
    return True


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
