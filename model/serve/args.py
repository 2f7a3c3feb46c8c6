"""The flags of ``flywheel serve``, apart from the step so that the step table (``scripts/cli.py``)
names them without importing the predictor."""

from __future__ import annotations

from dataclasses import dataclass

from model.core.config import required, setting


@dataclass
class ServeArgs:
    stable: str = required(
        "stable model: artifact folder (as KServe mounts it, /mnt/models) or models:/<name>@<alias> URI"
    )
    canary: str | None = setting(None, "canary model, served as <endpoint>-canary (the caller picks the arm)")
    shadow: str | None = setting(None, "shadow model: predicts on every request, logged and measured, never answers")
    stable_sha256: str | None = setting(
        None, "refuse to become ready unless the --stable artifact's manifest digest is this (the manifest records it)"
    )
    stable_version: str | None = setting(
        None,
        "registry version of the --stable model for logs and metrics (unset: from a models:/ URI, else sha-<digest>)",
    )
