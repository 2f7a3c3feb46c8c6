"""A simulated reviewer: labels logged messages from the ground truth, within a budget, with mistakes.

It stands in for the people working through the review queue (``model.prepare.review_queue``), so the loop
can run unattended. ``queue`` takes the queue's order (most informative first); ``random`` draws
the same number of logged messages at random, the baseline the queue has to beat. A mistake
replaces the true intent with another one the reviewer could have picked, chosen at random.
The output is the CSV the review queue hands out, with ``intent`` filled in, so ``flywheel prepare
--labels`` reads it exactly as it reads a person's work.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from model.core.errors import FlywheelError
from model.prepare.review_queue import QUEUE_COLUMNS

STRATEGIES = ("queue", "random")


def pick(queue: pd.DataFrame, logged: pd.DataFrame, budget: int, strategy: str, seed: int) -> pd.DataFrame:
    """The messages to label: the queue's first ``budget`` rows, or ``budget`` distinct logged texts at random."""
    if strategy not in STRATEGIES:
        raise FlywheelError(f"label strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if budget < 0:
        raise FlywheelError(f"label budget must be 0 or more, got {budget}")
    if strategy == "queue":
        return queue.head(budget).reset_index(drop=True)
    distinct = logged.drop_duplicates(subset="text").reset_index(drop=True)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(distinct), size=min(budget, len(distinct)), replace=False)
    return distinct.iloc[np.sort(chosen)].reset_index(drop=True)


def label(
    items: pd.DataFrame,
    truth_by_request: dict[str, str],
    intents: list[str],
    error_rate: float,
    seed: int,
) -> tuple[pd.DataFrame, dict]:
    """Fill ``intent`` from the truth of each item's request; ``error_rate`` of them get a wrong intent."""
    if not 0.0 <= error_rate <= 1.0:
        raise FlywheelError(f"annotator error rate must be within 0..1, got {error_rate}")
    missing = [r for r in items["request_id"] if r not in truth_by_request]
    if missing:
        raise FlywheelError(f"no ground truth for {len(missing)} request(s) to label, e.g. {missing[0]!r}")
    rng = np.random.default_rng(seed)
    true = [truth_by_request[r] for r in items["request_id"]]
    given = []
    for intent in true:
        others = [i for i in intents if i != intent]
        given.append(others[rng.integers(len(others))] if others and rng.random() < error_rate else intent)
    labelled = items.assign(intent=given)
    wrong = sum(a != b for a, b in zip(given, true))
    return labelled, {"labelled": len(labelled), "wrong_labels": int(wrong), "error_rate": error_rate}


def write_labels(labelled: pd.DataFrame, path: Path) -> Path:
    """The review queue's CSV with ``intent`` filled in (what a person returns)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    labelled.reindex(columns=QUEUE_COLUMNS).to_csv(path, index=False, quoting=csv.QUOTE_MINIMAL)
    return path
