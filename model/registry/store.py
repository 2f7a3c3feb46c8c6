"""Where the MLflow store is: ``RegistryConfig.tracking_uri``, which the CLI resolves once (see
``model.core.settings.resolve_locations``): ``MLFLOW_TRACKING_URI``, else a SQLite file in the work folder."""

from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow import MlflowClient

from model.core.config import RegistryConfig
from model.core.errors import FlywheelError

SQLITE = "sqlite:///"


def tracking_uri(cfg: RegistryConfig) -> str:
    if not cfg.tracking_uri:
        raise FlywheelError("registry.tracking_uri is not set (the CLI sets it from --work-dir or MLFLOW_TRACKING_URI)")
    return cfg.tracking_uri


def connect(cfg: RegistryConfig) -> MlflowClient:
    """Point MLflow at the store and make sure the experiment exists (a SQLite store keeps its artifacts
    beside the database file, in mlartifacts/)."""
    uri = tracking_uri(cfg)
    location = None
    if uri.startswith(SQLITE):
        folder = Path(uri[len(SQLITE) :]).parent
        folder.mkdir(parents=True, exist_ok=True)
        location = (folder / "mlartifacts").as_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri, uri)
    if client.get_experiment_by_name(cfg.experiment) is None:
        client.create_experiment(cfg.experiment, artifact_location=location)
    mlflow.set_experiment(cfg.experiment)
    return client
