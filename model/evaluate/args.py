"""The flags of ``flywheel evaluate`` and ``flywheel gate``, apart from the steps so that the step table
(``scripts/cli.py``) names them without importing PyTorch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from model.core.config import SAMPLE_DATA, required, setting

Split = Literal["train", "val", "test", "all"]


@dataclass
class EvaluateArgs:
    model: str = required("artifact folder or models:/<name>@<alias> URI")
    data: str = setting(str(SAMPLE_DATA), "dataset file or folder")
    split: Split = setting("test", "which split to evaluate on")


@dataclass
class GateArgs:
    challenger: str = required("artifact folder or models:/ URI of the candidate")
    champion: str = setting("auto", "artifact folder or models:/ URI; 'auto' = the registry's champion if any")
    data: str = setting(str(SAMPLE_DATA), "dataset whose frozen test split both models are compared on")
    split: Split = setting("test", "split to compare on")
