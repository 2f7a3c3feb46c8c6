"""The evaluation report as typed records: what ``evaluate`` returns, the gate decides on and training logs.

Every consumer reads attributes; JSON exists only where the report is written (``to_dict``: the
``flywheel evaluate`` step's result, the artifact's meta), with the keys and order it always had. The
optional sections are None where they do not apply: ``entities`` when no span was true or predicted
(an intent-only model is reported exactly as before entities existed), ``out_of_scope`` when the test
set has no out-of-scope example; an outcome's spans only when the report has entities.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from model.evaluate.spans import EntityMetrics


@dataclass(frozen=True)
class Scores:
    """One intent's precision, recall and F1 over the in-scope test examples; ``support``: its true examples."""

    precision: float
    recall: float
    f1: float
    support: int


NOT_SCORED = Scores(0.0, 0.0, 0.0, 0)  # an intent a report has no row for: no example, never predicted


@dataclass(frozen=True)
class Latency:
    """Single-query timings (``evaluation._latency``): CPU time, which the gate decides on, and wall time."""

    cpu_p50_ms: float
    cpu_p95_ms: float
    single_p50_ms: float  # wall clock
    single_p95_ms: float
    batch_queries_per_s: float


@dataclass(frozen=True)
class Span:
    """An entity span as an outcome keeps it: offsets and type (the text is in the test set)."""

    start: int
    end: int
    type: str


@dataclass(frozen=True)
class Outcome:
    """One test example: its true intent, the model's answer and, when the report has entities, both span sets."""

    id: str  # evaluation.example_id: the pairing key between two models' reports on the same test set
    intent: str
    predicted: str
    confidence: float
    fallback: bool  # handed off to a person instead of answered
    entities: list[Span] | None = None
    predicted_entities: list[Span] | None = None

    @property
    def right(self) -> bool:
        return self.predicted == self.intent

    def to_dict(self) -> dict:
        out = {k: getattr(self, k) for k in ("id", "intent", "predicted", "confidence", "fallback")}
        if self.entities is not None:
            out["entities"] = [asdict(s) for s in self.entities]
            out["predicted_entities"] = [asdict(s) for s in self.predicted_entities or []]
        return out


@dataclass(frozen=True)
class ConfusedPair:
    true: str
    predicted: str
    count: int


@dataclass(frozen=True)
class OutOfScope:
    """The test set's out-of-scope examples: their label (which outcomes the gate pairs) and the share handed off."""

    label: str
    recall: float
    n: int


@dataclass(frozen=True)
class EvaluationReport:
    """A model on a labelled test set (``model.evaluate.evaluation.evaluate`` says what each figure means)."""

    n_examples: int
    n_in_scope: int
    test_digest: str
    model_digest: str
    model_intents: list[str]  # the gate's "new intents": the challenger's, not the champion's
    fallback_threshold: float
    accuracy: float
    macro_f1: float
    answered_accuracy: float
    fallback_rate: float
    ece: float
    per_intent: dict[str, Scores]
    confused_pairs: list[ConfusedPair]
    latency: Latency
    examples: list[Outcome]
    entities: EntityMetrics | None = None
    out_of_scope: OutOfScope | None = None

    def scores(self, intent: str) -> Scores:
        """``intent``'s scores; NOT_SCORED where the report has none (the model does not know it, no test example)."""
        return self.per_intent.get(intent, NOT_SCORED)

    def outcomes(self) -> dict[str, Outcome]:
        """Each example's outcome by its id, to pair with another model's on the same test set."""
        return {e.id: e for e in self.examples}

    def to_dict(self) -> dict:
        """The report as ``evaluate.json`` holds it: the fields in order, then the optional sections' keys."""
        out = asdict(self)
        del out["entities"], out["out_of_scope"]
        out["examples"] = [e.to_dict() for e in self.examples]  # spans only when the report has entities
        if self.entities is not None:
            out["entities"] = self.entities.to_dict()
        if self.out_of_scope is not None:
            oos = self.out_of_scope
            out |= {"oos_label": oos.label, "oos_recall": oos.recall, "n_out_of_scope": oos.n}
        return out
