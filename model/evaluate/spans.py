"""Entity metrics: span-level precision, recall and F1 per entity type, and micro-averaged over all types.

A predicted span counts only when its type, start and end all equal those of a true span of the same
example: the exact-match rule of CoNLL, which seqeval applies to BIO chunks, but on character offsets
instead of tags, so the figure does not depend on the tokenizer (two models with different tokenizers
are scored on the same spans, and a word-piece split cannot hide a wrong boundary). A partial overlap,
or the right offsets with the wrong type, is a miss plus a false positive. Each true span is matched
at most once, so a prediction repeated twice is one hit and one false positive.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import NamedTuple

Key = tuple[str, int, int]  # (type, start, end): what must be equal for a match


class Tally(NamedTuple):
    hits: int  # true positives
    false_positives: int
    misses: int  # false negatives


@dataclass(frozen=True)
class SpanScores:
    """Precision, recall and F1 of exact span matches; ``support``: true spans, ``predicted``: predicted ones."""

    precision: float
    recall: float
    f1: float
    support: int
    predicted: int


@dataclass(frozen=True)
class EntityMetrics:
    """The evaluation report's entity section: micro-averaged over every type, and per type."""

    micro: SpanScores
    per_type: dict[str, SpanScores]

    def to_dict(self) -> dict:
        return asdict(self)


def match_spans(truth: Iterable[Key], predicted: Iterable[Key]) -> dict[str, Tally]:
    """Per entity type, the hits, false positives and misses of one example's predicted spans."""
    want, got = Counter(truth), Counter(predicted)
    hit = want & got  # multiset intersection: each true span absorbs at most one equal prediction
    counts: dict[str, list[int]] = {}
    for column, spans in enumerate((hit, got - hit, want - hit)):
        for (kind, _, _), n in spans.items():
            counts.setdefault(kind, [0, 0, 0])[column] += n
    return {kind: Tally(*c) for kind, c in counts.items()}


def entity_metrics(truth: list[list[Key]], predicted: list[list[Key]]) -> EntityMetrics | None:
    """The report's entities over examples (``truth[i]`` and ``predicted[i]`` belong to example i).
    None when no span is true or predicted: an intent-only model on a test set without entities is
    reported exactly as before entities existed.
    """
    if len(truth) != len(predicted):
        raise ValueError(f"{len(truth)} examples of true spans but {len(predicted)} of predicted ones")
    totals: dict[str, list[int]] = {}
    for want, got in zip(truth, predicted):
        for kind, tally in match_spans(want, got).items():
            total = totals.setdefault(kind, [0, 0, 0])
            for i, n in enumerate(tally):
                total[i] += n
    if not totals:
        return None
    micro = Tally(*(sum(t[i] for t in totals.values()) for i in range(3)))
    return EntityMetrics(
        micro=_scores(micro), per_type={kind: _scores(Tally(*totals[kind])) for kind in sorted(totals)}
    )


def _scores(t: Tally) -> SpanScores:
    """Precision, recall and F1 of one tally; 0 where a denominator is 0 (sklearn's zero_division=0)."""
    predicted, support = t.hits + t.false_positives, t.hits + t.misses
    precision = t.hits / predicted if predicted else 0.0
    recall = t.hits / support if support else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return SpanScores(precision, recall, f1, support, predicted)


def markdown_table(metrics: EntityMetrics) -> list[str]:
    """The entity table of an evaluation's markdown: worst type first, then the micro average."""
    lines = [
        "Entities (exact span match: type, start and end):",
        "",
        "| entity type | precision | recall | F1 | support | predicted |",
        "|---|---|---|---|---|---|",
    ]
    rows = sorted(metrics.per_type.items(), key=lambda kv: (kv[1].f1, kv[0]))
    for name, m in [*rows, ("**all types (micro)**", metrics.micro)]:
        lines.append(f"| {name} | {m.precision:.3f} | {m.recall:.3f} | {m.f1:.3f} | {m.support} | {m.predicted} |")
    return lines
