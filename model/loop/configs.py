"""Every config section the loop's steps read, loaded from one YAML file (the one its servers start with)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from model.core.config import (
    CanaryConfig,
    CheckConfig,
    DataConfig,
    DeliveryConfig,
    DriftConfig,
    GateConfig,
    LoopConfig,
    PiiConfig,
    PrepareConfig,
    RegistryConfig,
    ServeConfig,
    TrafficConfig,
    TrainConfig,
)
from model.core.settings import load_config


@dataclass
class LoopConfigs:
    """Every section the loop's steps read (the CLI fills them from the YAML file and flags)."""

    loop: LoopConfig
    data: DataConfig
    train: TrainConfig
    gate: GateConfig
    registry: RegistryConfig
    canary: CanaryConfig
    delivery: DeliveryConfig
    pii: PiiConfig
    prepare: PrepareConfig
    checks: CheckConfig
    drift: DriftConfig
    serve: ServeConfig
    traffic: TrafficConfig
    config_file: Path = field(default=Path())


def load_configs(config_file: Path, loop_cfg: LoopConfig, work: Path) -> LoopConfigs:
    """Every section from the YAML file (the one the servers are started with too); ``loop`` as given.

    The loop keeps everything in ``work``: its own MLflow store and conversation store, never the
    ones ``MLFLOW_TRACKING_URI`` or the config name."""
    sections = {f.name for f in dataclasses.fields(LoopConfigs)} - {"loop", "config_file"}
    loaded = {name: load_config(name, config_file) for name in sections}
    loaded["registry"] = dataclasses.replace(loaded["registry"], tracking_uri=f"sqlite:///{Path(work) / 'mlflow.db'}")
    return LoopConfigs(loop=loop_cfg, config_file=Path(config_file).resolve(), **loaded)
