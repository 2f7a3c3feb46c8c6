"""Labels for the next training set, from people first and the model second.

Human labels replace seed and auto labels of the same text (compared case-blind) but never an
earlier human label: that is a conflict, counted and kept. Auto-labels come only from confident,
non-fallback answers the user rated thumbs up, and never for a text a human labelled. What a
human should look at goes to the review queue (``review_queue``).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from model.core.config import PrepareConfig
from model.data.examples import COLUMNS
from model.prepare.cleaning import exact_key
from model.prepare.review_queue import needs_review, review_candidates


@dataclass
class Labelled:
    base: pd.DataFrame  # the current training set, relabelled where a human said otherwise
    new_human: pd.DataFrame  # human labels for texts the training set does not have yet
    auto: pd.DataFrame  # logged messages labelled with the model's answer
    review: pd.DataFrame  # every logged answer a human should look at, with its reasons
    relabelled: int  # seed or auto labels a human changed
    conflicts: int  # texts whose earlier human label differs from the new one (the earlier one stays)

    def examples(self) -> pd.DataFrame:
        """The training set to balance and split: existing, new human and auto-labelled rows."""
        frames = (self.base[COLUMNS], self.new_human[COLUMNS], self.auto[COLUMNS])
        return pd.concat(frames, ignore_index=True)


def label(
    base: pd.DataFrame, human: pd.DataFrame, logs: pd.DataFrame, known_intents: set[str], cfg: PrepareConfig
) -> Labelled:
    """Merge ``human`` labels into ``base``, auto-label and pick review candidates from cleaned ``logs``."""
    human_labels = dict(zip(human["text"].map(exact_key), human["intent"]))
    base, relabelled, conflicts = apply_human_labels(base, human_labels)
    new_human = new_human_examples(human, base, logs)
    # a text a human labelled is neither auto-labelled nor queued for review again
    unlabelled = logs[~logs["text"].map(exact_key).isin(human_labels)]
    auto = auto_labels(unlabelled, known_intents, cfg)
    return Labelled(base, new_human, auto, review_candidates(unlabelled), relabelled, conflicts)


def apply_human_labels(base: pd.DataFrame, human_labels: dict[str, str]) -> tuple[pd.DataFrame, int, int]:
    """``base`` with seed/auto rows relabelled by ``human_labels`` (case-blind text -> intent);
    also how many labels changed and how many earlier human labels disagreed (and were kept)."""
    base = base.copy()
    keys = base["text"].map(exact_key)
    labelled_by_human = keys.isin(human_labels)
    new_intent = keys.map(human_labels)
    relabel = labelled_by_human & (base["source"] != "human")
    conflicts = int((labelled_by_human & (base["source"] == "human") & (new_intent != base["intent"])).sum())
    relabelled = int((relabel & (new_intent != base["intent"])).sum())
    base.loc[relabel, "intent"] = new_intent[relabel]
    base.loc[relabel, "source"] = "human"
    return base, relabelled, conflicts


def new_human_examples(human: pd.DataFrame, base: pd.DataFrame, logs: pd.DataFrame) -> pd.DataFrame:
    """Human labels for texts not in ``base``, with the conversation they were logged in (if any)."""
    conversation_of = dict(zip(logs["text"].map(exact_key), logs["conversation_id"]))
    new = human[~human["text"].map(exact_key).isin(set(base["text"].map(exact_key)))].copy()
    return new.assign(
        source="human", split="", conversation_id=new["text"].map(exact_key).map(conversation_of).fillna("")
    )


def may_auto_label(logs: pd.DataFrame, known_intents: set[str], cfg: PrepareConfig) -> pd.Series:
    return (
        ~needs_review(logs)
        & (logs["thumbs"] == "up")
        & (logs["confidence"] >= cfg.auto_label_min_confidence)
        & logs["predicted_intent"].isin(known_intents)
    )


def auto_labels(logs: pd.DataFrame, known_intents: set[str], cfg: PrepareConfig) -> pd.DataFrame:
    """The logged messages whose answer may be trusted as their label (``may_auto_label``)."""
    trusted = logs[may_auto_label(logs, known_intents, cfg)]
    return trusted.assign(intent=trusted["predicted_intent"], source="auto", split="")
