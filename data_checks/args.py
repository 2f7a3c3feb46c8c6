"""The flags of ``flywheel check-data`` and ``flywheel drift``, apart from the steps so that the step
table (``scripts/cli.py``) names them without importing Great Expectations or Evidently."""

from __future__ import annotations

from dataclasses import dataclass

from model.core.config import SAMPLE_DATA, required, setting


@dataclass
class CheckDataArgs:
    events: str | None = setting(None, "conversation snapshot (Parquet) to check with the 'logged_events' suite")
    training: str | None = setting(
        None, "training snapshot (Parquet/CSV/JSONL, e.g. prepare's examples.parquet) for the 'training_snapshot' suite"
    )
    reference: str = setting(
        str(SAMPLE_DATA), "dataset whose intents are the known labels (new ones must be declared with --new-intents)"
    )


@dataclass
class DriftArgs:
    current: str = required("conversation snapshot (Parquet) of the recent window")
    reference: str = setting(str(SAMPLE_DATA), "training snapshot the model learned from (any format `train` reads)")
    model: str | None = setting(
        None,
        "artifact folder or models:/ URI: its predictions on the reference texts are the baseline "
        "for intent/confidence/fallback",
    )
    reference_events: str | None = setting(
        None, "an earlier window of logs as the baseline for predictions and feedback rates (instead of --model)"
    )
