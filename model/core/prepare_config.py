"""``flywheel prepare``'s settings: cleaning, labelling, the review queue's clusters and candidate
intents, and the label check. Re-exported by ``model/core/config.py`` with the other sections."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from model.core.fields import PACKAGED_ENCODER, setting


@dataclass
class PrepareConfig:
    min_chars: int = setting(3, "shorter messages ('ok', 'hi') carry no intent to learn")
    max_chars: int = setting(300, "longer messages are pasted emails or logs mixing several requests")
    min_letters: int = setting(3, "fewer letters (outside placeholders) is noise: '???', '1234', '<EMAIL>'")
    auto_label_min_confidence: float = setting(
        0.9, "auto-labels only where the model was sure, not a fallback, and the user said thumbs up"
    )
    auto_label_limit: int = setting(
        5000,
        "most auto-labels taken from one window (a stable pick by text hash, so in proportion to each intent's): each "
        "is embedded for the label check, a minute or two per 5,000 on 2 CPU cores; the rest are left out, counted",
    )
    intent_floor: int = setting(20, "an intent with fewer examples has unreliable F1; reported so someone labels more")
    entity_floor: int = setting(
        20, "an entity type with fewer spans has unreliable span F1 (one miss moves it by 0.05); reported, not dropped"
    )
    intent_cap: int = setting(
        1000, "more examples of one intent than this skews the model; extra auto-labels are left out"
    )
    grow_test: bool = setting(
        True,
        "human labels join the test split by the text-hash rule (auto-labels never), so new intents get test support",
    )
    new_intents: list[str] = setting(
        [], "intents that human labels may introduce; any other unknown label is refused as a typo"
    )
    new_entity_types: list[str] = setting(
        [], "entity types that human labels may introduce; any other unknown type is refused as a typo"
    )
    review_limit: int = setting(1000, "most tasks exported to the review queue per run (most informative first)")
    review_encoder: str | None = setting(
        PACKAGED_ENCODER,
        "sentence encoder that groups the review queue into clusters (the packaged MiniLM works offline); "
        "unset: least confident first, no clusters, no new-intent candidates",
    )
    cluster_distance: float = setting(
        0.4,
        "messages stay one cluster while their mean cosine distance is under this; in a Banking77 trial (20 "
        "unseen intents, 25-40 texts each, among 600-800 others) 0.4 kept 19-20 of them in clusters 70 percent "
        "pure (0.5: 11-13)",
    )
    cluster_min_size: int = setting(
        3, "smaller groups are one-offs: pooled into one group of the queue, not proposed as new intents"
    )
    cluster_weight: float = setting(
        0.5,
        "labels per cluster grow as its traffic to this power (0: one each in turn, 1: proportional): "
        "a big confusion gets more labels than a small one, never all of them",
    )
    cluster_max_messages: int = setting(
        5000,
        "the most worth labelling are embedded and clustered (an n x n distance matrix); past this many the rest "
        "follow unclustered, unembedded: a month's review candidates would take an hour to embed on a CPU",
    )
    candidate_examples: int = setting(5, "typical messages shown per proposed intent: enough to judge it at a glance")
    candidate_name_words: int = setting(3, "words in a suggested intent name: 'card_arrive_waiting' reads as a name")
    log_to_mlflow: bool = setting(True, "record the prepared snapshot as an MLflow run input, traceable by its digest")
    label_check: bool = setting(
        True, "reviewers get a few percent of labels wrong; likely-wrong new labels wait for a second look, untrained"
    )
    label_check_method: Literal[
        "low_self_confidence", "prune_by_noise_rate", "prune_by_class", "both", "confident_learning"
    ] = setting(
        "low_self_confidence",
        "cleanlab's filter: as many as confident learning estimates are wrong, least likely given label first; on "
        "Banking77 it caught over 90 of 100 planted mistakes, flagging 2 of 100 right labels (per-pair pruning: 70)",
    )
    label_check_folds: int = setting(
        5, "each label is judged by a classifier trained on the other 4/5: out-of-sample, yet most data to learn from"
    )
    label_check_min_per_intent: int = setting(
        10, "an intent with fewer labelled rows (at least the folds) has no reliable probabilities: it is not checked"
    )
    label_check_c: float = setting(
        10.0,
        "the logistic regression's inverse regularisation: on Banking77, 1 underfit (fewer mistakes caught), "
        "50 flagged more right labels",
    )
    label_check_encoder: str = setting(PACKAGED_ENCODER, "sentence encoder for the label check: the drift check's")
