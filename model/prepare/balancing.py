"""Balancing and splitting the assembled training set.

Balance: each intent is capped by leaving out auto-labels (never human, seed or test rows, and
always the same ones for the same texts); intents under the floor are reported, not dropped; new
intents with too few labels to split and learn wait for more. Split: old examples keep their split
(the seed test set stays frozen inside the growing one); with ``grow_test``, new human labels join
the test split by the same text-hash rule as every other text, so a new intent gets test support;
auto-labels never do (they are the model's own answers: a test set of them would grade the champion
on what it already says); a text in test and elsewhere leaves the elsewhere.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pandas as pd

from model.core.config import DataConfig, PrepareConfig
from model.data.examples import assign_splits, in_test_share
from model.prepare.cleaning import exact_key
from model.prepare.labelling import stable_rank


@dataclass
class Balanced:
    examples: pd.DataFrame
    capped: dict[str, int]  # intent -> auto-labels left out
    below_floor: dict[str, int]  # intent -> examples, for intents under the floor
    waiting: dict[str, int]  # new intent -> labels so far, for those left out until they have more

    def summary(self, cfg: PrepareConfig) -> dict:
        """The datasheet's ``balancing`` section."""
        return {
            "floor": cfg.intent_floor,
            "cap": cfg.intent_cap,
            "capped": self.capped,
            "below_floor": self.below_floor,
        }


def balance_examples(
    examples: pd.DataFrame, known_intents: set[str], data_cfg: DataConfig, prep_cfg: PrepareConfig
) -> Balanced:
    capped_examples, capped, below_floor = balance(examples, prep_cfg, data_cfg.oos_label)
    kept, waiting = hold_back_thin_new_intents(capped_examples, known_intents, data_cfg)
    below_floor = {k: v for k, v in below_floor.items() if k not in waiting}
    return Balanced(kept, capped, below_floor, waiting)


def balance(df: pd.DataFrame, cfg: PrepareConfig, oos_label: str) -> tuple[pd.DataFrame, dict, dict]:
    """Cap each intent by leaving out auto-labels (never human, seed or test rows); report those under the floor."""
    counts = df.loc[df["intent"] != oos_label, "intent"].value_counts()
    capped: dict[str, int] = {}
    drop_idx: list = []
    for intent, n in counts.items():
        if n <= cfg.intent_cap:
            continue
        candidates = df[(df["intent"] == intent) & (df["source"] == "auto") & (df["split"] != "test")]
        excess = min(n - cfg.intent_cap, len(candidates))
        if excess:
            order = stable_rank(candidates["text"]).sort_values().index[:excess]
            drop_idx.extend(order)
            capped[intent] = int(excess)
    df = df.drop(index=drop_idx)
    counts = df.loc[df["intent"] != oos_label, "intent"].value_counts()
    below = {k: int(v) for k, v in counts.items() if v < cfg.intent_floor}
    return df, capped, below


def hold_back_thin_new_intents(df: pd.DataFrame, known: set[str], cfg: DataConfig) -> tuple[pd.DataFrame, dict]:
    """Leave out new intents with fewer than ``min_examples_per_intent`` labels: too few to split and learn.

    Their labels stay in the labels file; a later run with more labels takes them in. Returns the kept
    rows and ``{intent: labels so far}`` for the datasheet.
    """
    counts = df.loc[~df["intent"].isin(known | {cfg.oos_label}), "intent"].value_counts()
    waiting = {k: int(v) for k, v in counts.items() if v < cfg.min_examples_per_intent}
    return df[~df["intent"].isin(waiting)].reset_index(drop=True), dict(sorted(waiting.items()))


def split_examples(examples: pd.DataFrame, data_cfg: DataConfig, prep_cfg: PrepareConfig) -> tuple[pd.DataFrame, int]:
    """Give new rows a split (test only for human labels, with ``grow_test``); drop train/val rows whose
    text is in test.

    Returns the split rows and how many were dropped for overlapping the test set.
    """
    examples = examples.reset_index(drop=True)
    if prep_cfg.grow_test:
        new_human = (examples["source"] == "human") & (examples["split"] == "")
        to_test = new_human & examples["text"].map(lambda t: in_test_share(t, data_cfg))
        examples = examples.assign(split=examples["split"].mask(to_test, "test"))
    split = assign_splits(examples, dataclasses.replace(data_cfg, test_fraction=0.0))
    test_keys = set(split.loc[split["split"] == "test", "text"].map(exact_key))
    overlap = (split["split"] != "test") & split["text"].map(exact_key).isin(test_keys)
    return split[~overlap].reset_index(drop=True), int(overlap.sum())
