"""MLflow tracking: the training run with its config, dataset, metrics and git SHA; for training that runs
elsewhere (a Kubeflow Trainer job), the run created beforehand holding the dataset, and artifacts moved
through the run's artifact store (object storage on a real server, docs/cluster.md)."""

from __future__ import annotations

import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException

from model.core.config import PROJECT_ROOT, RegistryConfig
from model.core.errors import FlywheelError
from model.core.git import git
from model.registry.store import connect, tracking_uri

DATASET_DIR, ARTIFACT_DIR = "dataset", "artifact"  # a run's artifact folders: what it trained on, what it made
# an artifact URI rather than a path: runs:/, models:/, s3://, gs://, https://, file:// (a scheme of 2+ characters,
# so a Windows drive letter is still a path)
URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")


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
def training_run(cfg: RegistryConfig, run_name: str, run_id: str | None = None, required: bool = False):
    """An MLflow run around training; yields its id. A failure inside marks the run FAILED.

    ``run_id``: go on with that run (training resumed from a checkpoint after its process was killed,
    leaving the run RUNNING) rather than start another; a run this store does not hold starts afresh,
    unless it is ``required`` (created for this training by ``flywheel train-job``): then it is an error."""
    connect(cfg)
    if run_id is not None and not _exists(run_id):
        if required:
            raise FlywheelError(f"MLflow run {run_id} not found at {tracking_uri(cfg)} (experiment {cfg.experiment})")
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
    upload: Path | None = None,
) -> None:
    """Record config, git SHA, the dataset as input (with its digest), per-epoch and final metrics; ``upload``:
    the sealed artifact folder, uploaded into the run as ``artifact/`` (a cluster job's disk is gone once it
    ends: ``flywheel train-job`` downloads it from there)."""
    mlflow.log_params(_flatten("", config))
    mlflow.set_tags({"git_sha": sha, "dataset_digest": dataset_digest, "artifact_digest": artifact_digest})
    ds = mlflow.data.from_pandas(dataset, source=dataset_source, name="intents", digest=dataset_digest[:32])
    mlflow.log_input(ds, context="training")
    for record in history:
        mlflow.log_metrics({k: v for k, v in record.items() if k not in ("epoch", "steps")}, step=record["epoch"])
    mlflow.log_metrics({k: v for k, v in metrics.items() if v == v})  # NaN-free
    if upload is not None:
        mlflow.log_artifacts(str(upload), ARTIFACT_DIR)


def create_remote_run(cfg: RegistryConfig, data: Path, tags: dict[str, str]) -> tuple[str, str]:
    """A training run for a job that runs elsewhere (``flywheel train-job``), left RUNNING for the job to go
    on in, with the dataset (a file or a folder) uploaded as its artifact; returns the run's id and the
    dataset's ``runs:/`` URI, which ``flywheel train --data`` downloads."""
    client = connect(cfg)
    experiment = client.get_experiment_by_name(cfg.experiment)
    run = client.create_run(experiment.experiment_id, run_name=time.strftime("%Y%m%d-%H%M%S-cluster"), tags=tags)
    run_id = run.info.run_id
    if data.is_dir():
        client.log_artifacts(run_id, str(data), f"{DATASET_DIR}/{data.name}")
    else:
        client.log_artifact(run_id, str(data), DATASET_DIR)
    return run_id, f"runs:/{run_id}/{DATASET_DIR}/{data.name}"


def download(cfg: RegistryConfig, uri: str, dst: Path) -> Path:
    """The artifact at ``uri`` (``runs:/<run id>/<path>``, ``s3://``, ``gs://``, ...) downloaded into ``dst``
    by MLflow's own artifact repositories; its local path."""
    dst.mkdir(parents=True, exist_ok=True)
    try:
        found = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst), tracking_uri=tracking_uri(cfg))
        return Path(found)
    except Exception as exc:  # MLflow, boto3 and the cloud clients each raise their own
        raise FlywheelError(f"{uri}: cannot download: {exc}") from exc


class RunInfo(NamedTuple):
    status: str  # RUNNING, FINISHED, FAILED, KILLED, SCHEDULED
    tags: dict[str, str]
    artifact_uri: str  # where the run's artifacts are stored (s3://... on a server as docs/cluster.md sets it up)


def run_info(cfg: RegistryConfig, run_id: str) -> RunInfo:
    run = connect(cfg).get_run(run_id)
    return RunInfo(run.info.status, dict(run.data.tags), run.info.artifact_uri)


def mark_failed(cfg: RegistryConfig, run_id: str) -> None:
    """End a run whose job failed without ending it (killed, never started), so it shows FAILED."""
    connect(cfg).set_terminated(run_id, "FAILED")
