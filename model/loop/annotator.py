"""A simulated reviewer: labels logged messages from the ground truth, within a budget, with mistakes.

It stands in for the people working through the review queue (``model.prepare.review_queue``), so the loop
can run unattended. ``queue`` takes the queue's order (most informative first); ``random`` draws
the same number of logged messages at random, the baseline the queue has to beat. A mistake
replaces the true intent with another one the reviewer could have picked, chosen at random.
The output is the CSV the review queue hands out, with ``intent`` filled in, so ``flywheel prepare
--labels`` reads it exactly as it reads a person's work; ``recheck_score`` measures how many of the
planted mistakes prepare's label check caught.

With ``cluster_decisions`` (``LoopConfig``), the reviewer first judges that many of the candidate new
intents prepare proposes (``model.prepare.discovery``), in their order (``name_clusters``): a
cluster whose members' true intents agree at least ``MIN_PURITY`` (0.7) of the time is named by
that majority intent, as a person reading its typical messages would name it, and with the same
``error_rate`` gets a wrong name instead. Each cluster judged costs one label of the budget, named
or not; its members then count as labelled (by the one decision), and the queue's one-by-one
labels go to the other messages. The simulated reviewer knows each cluster's purity exactly; a
person estimates it from the typical messages, so this is the best a careful reviewer can do.

Where the loop's data annotates entities, the reviewer also answers with each text's true entities
(``true_entities``), in the CSV's ``entities`` column, replacing the model's pre-filled spans. The
queue shows the text as the collector stored it (personal data redacted) and prepare normalised
it, so each true span is looked for where its value now is; one that is gone (it was in what the
redaction replaced) is not marked, as a person would not see it. Mistakes are made on intents only.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from model.core.errors import FlywheelError
from model.data.entities import dump_spans, load_spans
from model.prepare.cleaning import exact_key, normalise
from model.prepare.discovery import MIN_PURITY, cluster_purity
from model.prepare.entity_labels import COLUMN as ENTITIES
from model.prepare.entity_labels import cells, place_spans
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


def true_entities(sent: list[pd.DataFrame], examples: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """Request id -> (its text as sent, that text's true entities) for the requests ``sent`` (the loop's
    batches: ``request_id``, ``text``), from the ``examples`` they were drawn from; empty when the
    examples annotate no entity at all (intent-only data: the reviewer answers intents only)."""
    truth = dict(zip(examples["text"], cells(examples)))
    if all(cell == "[]" for cell in truth.values()):
        return {}
    return {
        request: (text, truth.get(text, "[]"))
        for batch in sent
        for request, text in zip(batch["request_id"], batch["text"])
    }


def label(
    items: pd.DataFrame,
    truth_by_request: dict[str, str],
    intents: list[str],
    error_rate: float,
    seed: int,
    entities_by_request: dict[str, tuple[str, str]] | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Fill ``intent`` from the truth of each item's request; ``error_rate`` of them get a wrong intent.

    With ``entities_by_request`` (``true_entities``), ``entities`` too: the true spans found in the
    item's text as queued."""
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
    if entities_by_request:
        marked = [
            _marked(t, *entities_by_request.get(r, (t, "[]"))) for t, r in zip(items["text"], items["request_id"])
        ]
        labelled[ENTITIES] = marked
    wrong = sum(a != b for a, b in zip(given, true))
    return labelled, {"labelled": len(labelled), "wrong_labels": int(wrong), "error_rate": error_rate}


def recheck_score(flagged: list[str], texts: list[str], given: list[str], true: list[str]) -> dict:
    """How the label check did on the reviewer's labels: the share of planted mistakes (a ``given``
    intent that is not the ``true`` one) among the ``flagged`` texts, and the share of right labels
    flagged; texts are compared as prepare compares them (normalised, case-blind). A label prepare
    never checked (an out-of-scope one, one of an intent too small to check) counts as not flagged."""
    flagged_keys = {exact_key(normalise(t)) for t in flagged}
    hit = [exact_key(normalise(t)) in flagged_keys for t in texts]
    wrong = [g != t for g, t in zip(given, true)]
    mistakes, caught = sum(wrong), sum(h and w for h, w in zip(hit, wrong))
    right, right_flagged = len(wrong) - mistakes, sum(h and not w for h, w in zip(hit, wrong))
    return {
        "labels": len(wrong),
        "planted_mistakes": mistakes,
        "planted_mistakes_caught": caught,
        "right_labels_flagged": right_flagged,
        "caught_share": round(caught / mistakes, 4) if mistakes else None,
        "right_flagged_share": round(right_flagged / right, 4) if right else None,
    }


def _marked(queued: str, sent: str, cell: str) -> str:
    """The spans of ``cell`` (true entities of ``sent``) a reviewer would mark on ``queued``, one by one."""
    if queued == sent:
        return cell
    spans = load_spans(cell)
    together = place_spans(queued, spans)
    if together is not None:
        return dump_spans(together)
    # some span is gone: mark the others, each where it now is, never two on the same characters
    marked: list[dict] = []
    for placed in filter(None, (place_spans(queued, [span]) for span in spans)):
        if all(placed[0]["end"] <= m["start"] or m["end"] <= placed[0]["start"] for m in marked):
            marked.append(placed[0])
    return dump_spans(marked)


def write_labels(labelled: pd.DataFrame, path: Path) -> Path:
    """The review queue's CSV with ``intent`` (and, where the queue has them, ``entities``) filled in:
    what a person returns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # no span anywhere says what no column says (no entities), so intent-only labels stay as they were
    spans = ENTITIES in labelled.columns and (cells(labelled) != "[]").any()
    columns = QUEUE_COLUMNS + ([ENTITIES] if spans else [])
    labelled.reindex(columns=columns).to_csv(path, index=False, quoting=csv.QUOTE_MINIMAL)
    return path


def name_clusters(
    table: pd.DataFrame,
    candidates: list[dict],
    truth_by_request: dict[str, str],
    intents: list[str],
    *,
    decisions: int,
    error_rate: float,
    seed: int,
) -> tuple[pd.DataFrame, dict]:
    """The candidates CSV (``table``) with ``name`` filled in for the first ``decisions`` candidates
    that are ``MIN_PURITY`` pure (module docstring), and what that cost and labelled.

    ``candidates``: the same clusters as ``new_intent_candidates.json`` (with member request ids)."""
    by_cluster = {str(c["cluster"]): c for c in candidates}
    rng = np.random.default_rng([seed, 1])  # its own stream: the one-by-one labels' mistakes stay as they were
    named = table.assign(name="")
    judged = min(decisions, len(table))
    texts: list[str] = []
    for n in range(judged):
        members = by_cluster[str(table["cluster"].iloc[n])]["members"]
        intent, purity = cluster_purity(
            [truth_by_request[m["request_id"]] for m in members if m["request_id"] in truth_by_request]
        )
        if intent is None or purity < MIN_PURITY:
            continue
        others = [i for i in intents if i != intent]
        if others and rng.random() < error_rate:
            intent = others[rng.integers(len(others))]
        named.iloc[n, named.columns.get_loc("name")] = intent
        texts += [m["text"] for m in members]
    stats = {
        "clusters_judged": judged,
        "clusters_named": int((named["name"] != "").sum()),
        "cluster_labels": len(texts),
    }
    return named, {**stats, "named_texts": texts}
