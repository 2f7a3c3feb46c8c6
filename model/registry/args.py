"""The flags of ``flywheel register`` and ``flywheel set-champion``, apart from the steps so that the step
table (``scripts/cli.py``) names them without importing MLflow."""

from __future__ import annotations

from dataclasses import dataclass

from model.core.config import required, setting


@dataclass
class RegisterArgs:
    model: str = required("artifact folder to register")
    gate: str = required("gate decision JSON (from flywheel gate) that passed this artifact")


@dataclass
class SetChampionArgs:
    version: int | None = setting(None, "gate-passed model version to make champion (unset: the current challenger)")
