"""Where the MLflow store is: ``MLFLOW_TRACKING_URI``, else a SQLite file in the work folder."""

from __future__ import annotations

import os

import mlflow
from mlflow import MlflowClient

from model.core.config import RegistryConfig, work_dir


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
