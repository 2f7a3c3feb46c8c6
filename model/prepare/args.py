"""The flags of ``flywheel prepare``, apart from the step so that the step table (``scripts/cli.py``)
names them without importing the step's dependencies."""

from __future__ import annotations

from dataclasses import dataclass

from model.core.config import SAMPLE_DATA, required, setting


@dataclass
class PrepareArgs:
    snapshot: str = required(
        "conversation snapshot (Parquet, the collector's export; schema in model/data/conversations.py)"
    )
    data: str = setting(str(SAMPLE_DATA), "current training set (any format `train` reads)")
    labels: str | None = setting(
        None, "human labels to merge: Label Studio JSON export or the review CSV with 'intent' filled in"
    )
    cluster_names: str | None = setting(
        None,
        "the review folder's new_intent_candidates.csv, 'name' filled in: a named cluster's messages get that intent",
    )
    out: str | None = setting(
        None, "folder to create for the prepared snapshot (unset: <work dir>/datasets/<time>-<digest>)"
    )
