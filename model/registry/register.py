"""Registration: a gated artifact becomes a new model version (alias ``challenger``); ``champion`` moves.

The serving path never imports this module (the import contract in pyproject.toml says so).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import version as pkg_version
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from model.core.config import RegistryConfig
from model.core.errors import FlywheelError
from model.registry.store import connect
from model.registry.versions import (
    ARTIFACT_KEY,
    CHALLENGER,
    CHAMPION,
    GATE_TAG,
    alias_version,
    all_versions,
    gated_version,
)

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "text")]),
    outputs=Schema([ColSpec("string", "intent"), ColSpec("double", "confidence"), ColSpec("boolean", "fallback")]),
)


@dataclass(frozen=True)
class Registered:
    """A gated artifact's model version, now the ``challenger``."""

    name: str
    version: int
    created: bool  # False: the same git SHA and dataset digest were registered before, as this version
    alias: str
    model_uri: str


@dataclass(frozen=True)
class ChampionMoved:
    name: str
    champion: int
    previous_champion: int | None


def register(cfg: RegistryConfig, artifact_dir: Path, meta: dict, artifact_digest: str) -> Registered:
    """Register an artifact as a new version with alias ``challenger``.

    Idempotent: a version with the same git SHA and dataset digest is reused, not duplicated.
    """
    client = connect(cfg)
    sha, digest = meta["git_sha"], meta["dataset_digest"]
    for mv in all_versions(client, cfg.model_name):
        if mv.tags.get("git_sha") == sha and mv.tags.get("dataset_digest") == digest:
            client.set_registered_model_alias(cfg.model_name, CHALLENGER, mv.version)
            return _registered(cfg, int(mv.version), created=False)
    packages = ("mlflow", "torch", "transformers", "safetensors", "pandas", "onnxruntime")  # onnxruntime: model.onnx
    requirements = [f"{p}=={pkg_version(p)}" for p in packages]
    with mlflow.start_run(run_id=_run_in_store(client, meta.get("mlflow_run_id"))):
        info = mlflow.pyfunc.log_model(
            name="intent_model",
            python_model=str(Path(__file__).with_name("pyfunc_model.py")),
            artifacts={ARTIFACT_KEY: str(artifact_dir)},
            code_paths=[str(Path(__file__).parents[1])],  # the whole `model` package: the pyfunc imports it
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
    return _registered(cfg, int(mv.version), created=True)


def _registered(cfg: RegistryConfig, version: int, *, created: bool) -> Registered:
    return Registered(cfg.model_name, version, created, CHALLENGER, f"models:/{cfg.model_name}/{version}")


def _run_in_store(client: MlflowClient, run_id: str | None) -> str | None:
    """The training run if this store has it (None starts a new run: trained against another store)."""
    if not run_id:
        return None
    try:
        return client.get_run(run_id).info.run_id
    except MlflowException:
        return None


def promote(cfg: RegistryConfig, version: int | None = None) -> ChampionMoved:
    """Move ``champion`` to ``version`` (default: the current challenger)."""
    client = connect(cfg)
    if version is None:
        version = alias_version(cfg, CHALLENGER)
        if version is None:
            raise FlywheelError(f"model '{cfg.model_name}' has no '{CHALLENGER}' version to promote")
    gated_version(client, cfg, version, "promoted to champion")
    previous = alias_version(cfg, CHAMPION)
    client.set_registered_model_alias(cfg.model_name, CHAMPION, str(version))
    return ChampionMoved(cfg.model_name, int(version), previous)
