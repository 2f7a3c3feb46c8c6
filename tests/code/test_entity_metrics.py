"""Code tests: span-level entity metrics (exact match on character offsets), their place in the
evaluation report and its markdown, and the gate's per-entity-type guard."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest

from model.artifact.predictor import Entity, Prediction
from model.core.config import GateConfig
from model.core.errors import FlywheelError
from model.evaluate.evaluation import evaluate, render_markdown
from model.evaluate.gate import decide
from model.evaluate.gate import render_markdown as render_gate
from model.evaluate.report import EvaluationReport, Latency, Outcome, Scores
from model.evaluate.spans import EntityMetrics, Tally, entity_metrics, match_spans

CFG = GateConfig(latency_budget_ms=1000, max_entity_f1_drop=0.05, min_entity_support=20, min_entity_f1=0.7)
ENTITY_CHECK = "per-entity-type F1"


# --- span matching ----------------------------------------------------------------------------------


def test_exact_span_is_a_hit():
    assert match_spans([("order_id", 9, 14)], [("order_id", 9, 14)]) == {"order_id": Tally(1, 0, 0)}


@pytest.mark.parametrize("predicted", [("order_id", 9, 13), ("order_id", 8, 14), ("order_id", 10, 16)])
def test_partial_overlap_is_a_miss_and_a_false_positive(predicted):
    assert match_spans([("order_id", 9, 14)], [predicted]) == {"order_id": Tally(0, 1, 1)}


def test_right_offsets_wrong_type_count_against_both_types():
    got = match_spans([("order_id", 9, 14)], [("amount", 9, 14)])
    assert got == {"order_id": Tally(0, 0, 1), "amount": Tally(0, 1, 0)}


def test_a_duplicated_prediction_is_one_hit_and_one_false_positive():
    got = match_spans([("order_id", 9, 14)], [("order_id", 9, 14), ("order_id", 9, 14)])
    assert got == {"order_id": Tally(1, 1, 0)}


def test_empty_truth_makes_every_prediction_a_false_positive():
    assert match_spans([], [("date", 0, 5), ("date", 7, 12)]) == {"date": Tally(0, 2, 0)}
    assert match_spans([("date", 0, 5)], []) == {"date": Tally(0, 0, 1)}
    assert match_spans([], []) == {}


def test_micro_average_pools_the_counts_of_all_types():
    truth = [[("order_id", 0, 5), ("date", 10, 15)], [("order_id", 3, 8)], []]
    predicted = [[("order_id", 0, 5), ("date", 10, 14)], [("order_id", 3, 8)], [("amount", 0, 2)]]
    metrics = entity_metrics(truth, predicted)
    order, date, amount = (metrics.per_type[k] for k in ("order_id", "date", "amount"))
    assert (order.precision, order.recall, order.support, order.predicted) == (1.0, 1.0, 2, 2)
    assert (date.f1, date.support, date.predicted) == (0.0, 1, 1)
    assert (amount.precision, amount.support, amount.predicted) == (0.0, 0, 1)
    micro = metrics.micro
    hits = 2  # the two order numbers
    assert micro.support == sum(m.support for m in metrics.per_type.values()) == 3
    assert micro.predicted == sum(m.predicted for m in metrics.per_type.values()) == 4
    assert micro.precision == pytest.approx(hits / 4) and micro.recall == pytest.approx(hits / 3)
    p, r = hits / 4, hits / 3
    assert micro.f1 == pytest.approx(2 * p * r / (p + r))


def test_no_span_anywhere_means_no_entity_metrics():
    assert entity_metrics([[], []], [[], []]) is None


# --- the evaluation report ------------------------------------------------------------------------

TEXTS = ["where is order 12345", "refund 20 euros please", "hello there", "order 777 arrived broken"]
INTENTS = ["order_status", "refund", "greeting", "complaint"]


class FakePredictor:
    """What evaluate() uses of a predictor; ``answers`` maps a text to its entities. A text not in TEXTS
    is handed off (fallback)."""

    labels = sorted(set(INTENTS))
    threshold = 0.5
    digest = "fake"
    runtime = served_runtime = "torch"

    def __init__(self, answers: dict[str, list[tuple[str, int, int]]] | None = None):
        self.answers = answers or {}

    def predict(self, texts):
        intent = dict(zip(TEXTS, INTENTS))
        return [
            Prediction(
                intent.get(t, "greeting"),
                0.9,
                t not in intent,
                tuple(Entity(k, t[s:e], s, e, 0.95) for k, s, e in self.answers.get(t, [])),
            )
            for t in texts
        ]


def span(text: str, value: str, kind: str) -> dict:
    start = text.index(value)
    return {"start": start, "end": start + len(value), "type": kind, "value": value}


def frame(entities: list[list[dict]] | None = None) -> pd.DataFrame:
    df = pd.DataFrame({"text": TEXTS, "intent": INTENTS})
    if entities is not None:
        df["entities"] = [json.dumps(spans) for spans in entities]
    return df


TRUTH = [
    [span(TEXTS[0], "12345", "order_id")],
    [span(TEXTS[1], "20 euros", "amount")],
    [],
    [span(TEXTS[3], "777", "order_id")],
]


def _without_timing(report: EvaluationReport) -> dict:
    return {k: v for k, v in report.to_dict().items() if k != "latency"}


REPORT_KEYS = [  # evaluate.json's keys, in order, as workflows and earlier reports read them
    *("n_examples", "n_in_scope", "test_digest", "model_digest", "model_intents", "fallback_threshold"),
    *("accuracy", "macro_f1", "answered_accuracy", "fallback_rate", "ece", "per_intent", "confused_pairs"),
    *("latency", "examples", "runtime", "served_runtime"),
]


def test_an_intent_only_model_on_a_test_set_without_entities_is_reported_as_before():
    without_column = evaluate(FakePredictor(), frame())
    empty_cells = evaluate(FakePredictor(), frame([[] for _ in TEXTS]))
    assert without_column.entities is None
    assert list(without_column.to_dict()) == REPORT_KEYS
    written = without_column.to_dict()["examples"]
    assert all(set(e) == {"id", "intent", "predicted", "confidence", "fallback"} for e in written)
    assert _without_timing(empty_cells) == _without_timing(without_column)
    assert "Entities" not in render_markdown(without_column)


def test_the_written_report_keeps_its_keys_with_entities_and_out_of_scope():
    df = pd.concat([frame(TRUTH), pd.DataFrame({"text": ["tell me a joke"], "intent": ["oos"], "entities": ["[]"]})])
    written = json.loads(json.dumps(evaluate(FakePredictor(), df.reset_index(drop=True)).to_dict()))
    assert list(written) == [*REPORT_KEYS, "entities", "oos_label", "oos_recall", "n_out_of_scope"]
    assert set(written["latency"]) == {"cpu_p50_ms", "cpu_p95_ms", "single_p50_ms", "single_p95_ms"} | {
        "batch_queries_per_s"
    }
    assert written["per_intent"]["refund"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert set(written["entities"]) == {"micro", "per_type"} and written["entities"]["micro"]["support"] == 3
    assert written["examples"][0]["entities"] == [{"start": 15, "end": 20, "type": "order_id"}]
    assert written["examples"][0]["predicted_entities"] == []
    assert (written["oos_label"], written["n_out_of_scope"]) == ("oos", 1)


def test_entities_are_scored_per_type_and_recorded_per_example():
    answers = {TEXTS[0]: [("order_id", 15, 20)], TEXTS[1]: [("amount", 10, 15)]}  # the second: "euros" alone
    report = evaluate(FakePredictor(answers), frame(TRUTH))
    ents = report.entities
    assert ents.per_type["order_id"].support == 2 and ents.per_type["order_id"].recall == 0.5
    assert ents.per_type["amount"].precision == 0.0  # inside the true span, but not its offsets
    assert ents.micro.support == 3 and ents.micro.predicted == 2
    first = report.to_dict()["examples"][0]
    assert first["entities"] == first["predicted_entities"] == [{"start": 15, "end": 20, "type": "order_id"}]
    assert report.examples[2].entities == report.examples[2].predicted_entities == []
    md = render_markdown(report)
    assert "| entity type | precision | recall | F1 | support | predicted |" in md
    assert "| order_id | 1.000 | 0.500 | 0.667 | 2 | 1 |" in md
    assert "| **all types (micro)** |" in md


def test_a_model_predicting_entities_on_a_test_set_without_them_is_scored():
    report = evaluate(FakePredictor({TEXTS[2]: [("name", 0, 5)]}), frame())
    assert report.entities.micro.support == 0 and report.entities.micro.predicted == 1


def test_an_invalid_entity_cell_in_the_test_set_is_named():
    bad = [list(s) for s in TRUTH]
    bad[1] = [{"start": 7, "end": 40, "type": "amount"}]
    with pytest.raises(FlywheelError, match=r"test example 1 .*refund 20 euros.*do not lie inside"):
        evaluate(FakePredictor(), frame(bad))


# --- the gate's entity guard ---------------------------------------------------------------------


def base_report(entities: EntityMetrics | None = None) -> EvaluationReport:
    """A report two models tie on for everything but entities (intents, accuracy, latency)."""
    return EvaluationReport(
        n_examples=100,
        n_in_scope=100,
        test_digest="T",
        model_digest="m",
        model_intents=["a"],
        fallback_threshold=0.5,
        accuracy=0.95,
        macro_f1=0.95,
        answered_accuracy=0.95,
        fallback_rate=0.0,
        ece=0.0,
        per_intent={"a": Scores(precision=0.95, recall=0.95, f1=0.95, support=100)},
        confused_pairs=[],
        latency=Latency(cpu_p50_ms=10.0, cpu_p95_ms=10.0, single_p50_ms=12.0, single_p95_ms=12.0,
                        batch_queries_per_s=100.0),
        examples=[Outcome(f"e{i}", "a", "a", 0.9, False) for i in range(100)],
        entities=entities,
    )  # fmt: skip


def scored(**per_type: tuple[int, int]) -> EntityMetrics:
    """Entity metrics of a model that gets ``hits`` of ``support`` spans of each type exactly right and
    the rest one character off (each such span a miss and a false positive)."""
    truth, predicted = [], []
    for kind, (hits, support) in per_type.items():
        for i in range(support):
            truth.append([(kind, 0, 5)])
            predicted.append([(kind, 0, 5) if i < hits else (kind, 0, 4)])
    return entity_metrics(truth, predicted)


GUARD_CASES = [
    # (name, challenger entities, champion entities, passes, detail must contain)
    ("same spans", scored(order_id=(27, 30)), scored(order_id=(27, 30)), True, "no entity type lost"),
    (
        "one type drops 0.2 with support 30",
        scored(order_id=(24, 30), date=(30, 30)),
        scored(order_id=(30, 30), date=(30, 30)),
        False,
        "order_id 1.000→0.800",
    ),
    ("drop with support 5", scored(order_id=(4, 5)), scored(order_id=(5, 5)), True, "not gated (support < 20)"),
    ("champion without entities", scored(order_id=(27, 30)), None, True, "nothing to compare"),
    ("challenger without entities", None, scored(order_id=(27, 30)), False, "the challenger has no entity metrics"),
    (
        "a type vanishes from the challenger's report",
        scored(date=(30, 30)),
        scored(order_id=(30, 30), date=(30, 30)),
        False,
        "order_id 1.000→0.000",
    ),
]


@pytest.mark.parametrize(
    ("name", "challenger", "champion", "passes", "detail"), GUARD_CASES, ids=[c[0] for c in GUARD_CASES]
)
def test_entity_guard_table(name, challenger, champion, passes, detail):
    decision = decide(base_report(challenger), base_report(champion), CFG)
    assert decision.passed is passes, decision.reasons
    (check,) = [c for c in decision.checks if c.name == ENTITY_CHECK]
    assert check.passed is passes and detail in check.detail
    assert [c.name for c in decision.checks if not c.passed] == ([] if passes else [ENTITY_CHECK])


def test_reports_without_entities_get_no_entity_check():
    decision = decide(base_report(), base_report(), CFG)
    assert decision.passed
    assert [c.name for c in decision.checks] == ["latency", "not significantly worse", "per-intent F1"]
    assert decision.challenger.entity_micro_f1 is None
    assert all("entity_micro_f1" not in s for s in decision.to_dict()["summary"].values())
    first = decide(base_report(), None, CFG)
    assert [c.name for c in first.checks] == ["latency", "accuracy floor", "macro-F1 floor"]


def test_a_rejection_names_the_type_and_both_f1s_in_the_pull_request_body():
    decision = decide(base_report(scored(amount=(20, 40))), base_report(scored(amount=(36, 40))), CFG)
    old, new = (scored(amount=(h, 40)).per_type["amount"].f1 for h in (36, 20))
    assert f"{ENTITY_CHECK}: lost more than 0.05 F1: amount {old:.3f}→{new:.3f}" in decision.reasons
    assert f"| {ENTITY_CHECK} | **fail** |" in render_gate(decision)
    assert decision.challenger.entity_micro_f1 == pytest.approx(new)
    assert decision.to_dict()["summary"]["challenger"]["entity_micro_f1"] == pytest.approx(new)


@pytest.mark.parametrize(("hits", "passes"), [(28, True), (14, False)])
def test_first_model_entity_floor(hits, passes):
    decision = decide(base_report(scored(order_id=(hits, 30))), None, CFG)
    (floor,) = [c for c in decision.checks if c.name == "entity micro-F1 floor"]
    assert floor.passed is passes and decision.passed is passes
    assert "floor 0.70" in floor.detail


def test_first_model_entity_floor_is_off_by_default():
    decision = decide(base_report(scored(order_id=(3, 30))), None, dataclasses.replace(CFG, min_entity_f1=None))
    (floor,) = [c for c in decision.checks if c.name == "entity micro-F1 floor"]
    assert decision.passed and "reported, not gated" in floor.detail
    assert GateConfig().min_entity_f1 is None


def test_first_model_entity_floor_needs_enough_true_spans():
    decision = decide(base_report(scored(order_id=(1, 5))), None, CFG)
    (floor,) = [c for c in decision.checks if c.name == "entity micro-F1 floor"]
    assert decision.passed and "not gated" in floor.detail
