"""Labels for the next training set, from people first and the model second.

Human labels replace seed and auto labels of the same text (compared case-blind), the intent and
the entities both, but never an earlier human label: that is a conflict, counted and kept.
Auto-labels come only from confident, non-fallback answers the user rated thumbs up, and never for
a text a human labelled; their entities are the model's predicted ones (the snapshot's
``entities``, confidence dropped). What a human should look at goes to the review queue
(``review_queue``), with the model's predicted entities to pre-annotate.

Every span is put back onto its text as prepare left it (redacted, normalised;
``entity_labels.place_spans``); a row whose spans do not all fit keeps none and is counted, as is an
answer predicting an entity type the training set does not know.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import pandas as pd

from model.core.config import PrepareConfig
from model.data.examples import COLUMNS
from model.prepare import entity_labels
from model.prepare.cleaning import exact_key
from model.prepare.entity_labels import COLUMN as ENTITIES
from model.prepare.review_queue import needs_review, review_candidates


@dataclass
class Labelled:
    base: pd.DataFrame  # the current training set, relabelled where a human said otherwise
    new_human: pd.DataFrame  # human labels for texts the training set does not have yet
    auto: pd.DataFrame  # logged messages labelled with the model's answer
    review: pd.DataFrame  # every logged answer a human should look at, with its reasons
    relabelled: int  # seed or auto labels a human changed
    conflicts: int  # texts whose earlier human label differs from the new one (the earlier one stays)
    entity_types: list[str] = field(default_factory=list)  # the spans' vocabulary (known plus declared)
    spans_lost: dict[str, int] = field(default_factory=dict)  # rows whose spans were dropped, per input
    auto_over_limit: int = 0  # trusted answers past ``auto_label_limit``, left out

    def examples(self) -> pd.DataFrame:
        """The training set to balance and split: existing, new human and auto-labelled rows."""
        frames = (self.base[COLUMNS], self.new_human[COLUMNS], self.auto[COLUMNS])
        return pd.concat(frames, ignore_index=True)

    def entity_summary(self) -> dict:
        """What the datasheet says about spans; nothing for intent-only data, whose datasheet stays as it was."""
        if not self.entity_types:
            return {}
        return {"entity_rows_dropped": self.spans_lost}


def label(
    base: pd.DataFrame,
    human: pd.DataFrame,
    logs: pd.DataFrame,
    known_intents: set[str],
    cfg: PrepareConfig,
    entity_types: set[str] = frozenset(),
) -> Labelled:
    """Merge ``human`` labels into ``base``, auto-label and pick review candidates from cleaned ``logs``.

    ``entity_types``: the types spans may have (the training set's and declared ones); without any,
    the logs' predicted entities are not read at all.
    """
    base, lost_base = entity_labels.place_column(base)
    human, lost_human = entity_labels.place_column(human)
    # without entity types there is nothing to offer a reviewer or to train: predictions are ignored
    no_types = (entity_labels.NONE, 0)
    predicted, lost_logs = entity_labels.predicted_column(logs, set(entity_types)) if entity_types else no_types
    logs = logs.assign(**{ENTITIES: predicted})
    keys = human["text"].map(exact_key)
    human_labels = dict(zip(keys, zip(human["intent"], human[ENTITIES])))
    base, relabelled, conflicts, lost_relabel = apply_human_labels(base, human_labels)
    new_human = new_human_examples(human, base, logs)
    # a text a human labelled is neither auto-labelled nor queued for review again
    unlabelled = logs[~logs["text"].map(exact_key).isin(human_labels)]
    auto, over_limit = auto_labels(unlabelled, known_intents, cfg)
    lost = {"training_set": lost_base, "human_labels": lost_human + lost_relabel, "predictions": lost_logs}
    review = review_candidates(unlabelled)
    return Labelled(base, new_human, auto, review, relabelled, conflicts, sorted(entity_types), lost, over_limit)


def apply_human_labels(
    base: pd.DataFrame, human_labels: dict[str, tuple[str, str]]
) -> tuple[pd.DataFrame, int, int, int]:
    """``base`` with seed/auto rows relabelled by ``human_labels`` (case-blind text -> intent and
    entities); also how many labels changed, how many earlier human labels disagreed (and were
    kept), and how many relabelled rows lost the human's spans (they did not fit the row's text)."""
    base = base.assign(**{ENTITIES: entity_labels.cells(base)})
    keys = base["text"].map(exact_key)
    labelled_by_human = keys.isin(human_labels)
    new_intent = keys.map(lambda k: human_labels[k][0] if k in human_labels else None)
    # the human's spans, placed onto the training set's own spelling of the text (case may differ)
    placed = [
        entity_labels.place_cell(text, human_labels[k][1]) if k in human_labels else cell
        for text, k, cell in zip(base["text"], keys, base[ENTITIES])
    ]
    unplaced = pd.Series([p is None for p in placed], index=base.index)
    new_entities = pd.Series([entity_labels.NONE if p is None else p for p in placed], index=base.index)
    changed = (new_intent != base["intent"]) | (new_entities != base[ENTITIES])
    relabel = labelled_by_human & (base["source"] != "human")
    lost = int((relabel & unplaced).sum())
    conflicts = int((labelled_by_human & (base["source"] == "human") & changed).sum())
    relabelled = int((relabel & changed).sum())
    base.loc[relabel, "intent"] = new_intent[relabel]
    base.loc[relabel, ENTITIES] = new_entities[relabel]
    base.loc[relabel, "source"] = "human"
    return base, relabelled, conflicts, lost


def new_human_examples(human: pd.DataFrame, base: pd.DataFrame, logs: pd.DataFrame) -> pd.DataFrame:
    """Human labels for texts not in ``base``, with the conversation they were logged in (if any)."""
    conversation_of = dict(zip(logs["text"].map(exact_key), logs["conversation_id"]))
    new = human[~human["text"].map(exact_key).isin(set(base["text"].map(exact_key)))].copy()
    return new.assign(
        source="human",
        split="",
        conversation_id=new["text"].map(exact_key).map(conversation_of).fillna(""),
        **{ENTITIES: entity_labels.cells(new)},
    )


def may_auto_label(logs: pd.DataFrame, known_intents: set[str], cfg: PrepareConfig) -> pd.Series:
    return (
        ~needs_review(logs)
        & (logs["thumbs"] == "up")
        & (logs["confidence"] >= cfg.auto_label_min_confidence)
        & logs["predicted_intent"].isin(known_intents)
    )


def auto_labels(logs: pd.DataFrame, known_intents: set[str], cfg: PrepareConfig) -> tuple[pd.DataFrame, int]:
    """The logged messages whose answer may be trusted as their label (``may_auto_label``), at most
    ``auto_label_limit`` of them (those first by text hash: the same texts every run, each intent in
    proportion to its share), with the model's predicted entities (placed by ``label``; none where the
    logs have no ``entities``); and how many trusted answers were past the limit."""
    trusted = logs[may_auto_label(logs, known_intents, cfg)]
    over = max(0, len(trusted) - cfg.auto_label_limit)
    if over:
        trusted = trusted.loc[stable_rank(trusted["text"]).sort_values(kind="stable").index[: cfg.auto_label_limit]]
    entities = entity_labels.cells(trusted).map(entity_labels.canonical)
    return trusted.assign(intent=trusted["predicted_intent"], source="auto", split="", **{ENTITIES: entities}), over


def stable_rank(texts: pd.Series) -> pd.Series:
    """A rank of texts that depends on nothing but each text (its sha256): which auto-labels a limit keeps."""
    return texts.map(lambda t: hashlib.sha256(t.encode()).hexdigest())
