"""Small labelled data cut from the bundled sample set (model/sample_data/support.csv)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def write_subset(sample_df: pd.DataFrame, path: Path, n_intents: int = 5) -> Path:
    """The first ``n_intents`` intents of the sample data plus its out-of-scope rows, as CSV."""
    keep = sorted(set(sample_df["intent"]) - {"oos"})[:n_intents] + ["oos"]
    sample_df[sample_df["intent"].isin(keep)].to_csv(path, index=False)
    return path
