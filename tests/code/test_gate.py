"""Code tests: the gate as a pure function, one row per situation it must decide."""

from __future__ import annotations

import dataclasses
import time

import pytest

from model.core.config import GateConfig
from model.evaluate.evaluation import _latency
from model.evaluate.gate import decide, render_markdown
from model.evaluate.report import EvaluationReport, Latency, Outcome, OutOfScope, Scores

CFG = GateConfig(
    alpha=0.05, min_support=10, max_f1_drop=0.05, latency_budget_ms=50, min_accuracy=0.8, min_macro_f1=0.75
)


def report(
    correct: list[bool], *, digest="T", cpu_p95=10.0, wall_p95=12.0, f1=None, model="m", intents=None, support=None
) -> EvaluationReport:
    """An evaluation report with the given per-example outcomes over intents a/b (``support``: per intent,
    where not 50; ``intents``: what the model knows, where not the intents scored)."""
    examples = [
        Outcome(f"e{i}", "a" if i % 2 else "b", ("a" if i % 2 else "b") if ok else "x", 0.9, False)
        for i, ok in enumerate(correct)
    ]
    acc = sum(correct) / len(correct)
    f1 = f1 or {"a": acc, "b": acc}
    support = {k: 50 for k in f1} | (support or {})
    return EvaluationReport(
        n_examples=len(examples),
        n_in_scope=len(examples),
        test_digest=digest,
        model_digest=model,
        model_intents=list(intents or f1),
        fallback_threshold=0.5,
        accuracy=acc,
        macro_f1=sum(f1.values()) / len(f1),
        answered_accuracy=acc,
        fallback_rate=0.0,
        ece=0.0,
        per_intent={k: Scores(precision=v, recall=v, f1=v, support=support[k]) for k, v in f1.items()},
        confused_pairs=[],
        latency=Latency(cpu_p50_ms=cpu_p95, cpu_p95_ms=cpu_p95, single_p50_ms=wall_p95, single_p95_ms=wall_p95,
                        batch_queries_per_s=100.0),
        examples=examples,
    )  # fmt: skip


def predicting(report_: EvaluationReport, intent: str, n: int, answer: str) -> EvaluationReport:
    """``report_`` with the first ``n`` examples of ``intent`` answered as ``answer``."""
    ids = [e.id for e in report_.examples if e.intent == intent][:n]
    examples = [dataclasses.replace(e, predicted=answer) if e.id in ids else e for e in report_.examples]
    return dataclasses.replace(report_, examples=examples)


SAME_F1 = {"a": 0.9, "b": 0.9}  # isolates the overall test from the per-intent one


def trade(lost_b: int, won_a: int, f1: dict) -> tuple[EvaluationReport, EvaluationReport]:
    """Champion and challenger on the same 100 examples: the challenger gets ``lost_b`` of intent b's
    examples wrong that the champion got right, and ``won_a`` of a's right that the champion got wrong,
    so overall they stay close and only the per-intent check can tell."""
    champion = predicting(report([True] * 100, f1=SAME_F1), "a", won_a, "x")
    challenger = predicting(report([True] * 100, f1=f1), "b", lost_b, "a")
    return challenger, champion


COLLAPSE = trade(15, 12, {"a": 0.95, "b": 0.70})  # b: 15 lost, none won: p = 2^-15
NOISE = trade(1, 1, {"a": 0.95, "b": 0.84})  # b: one example lost, one won: a drop of 0.06 within noise
CASES = [
    # (name, challenger, champion, passes, failing check)
    ("first model above floors", report([True] * 90 + [False] * 10), None, True, None),
    (
        "first model below accuracy floor",
        report([True] * 70 + [False] * 30, f1={"a": 0.9, "b": 0.9}),
        None,
        False,
        "accuracy floor",
    ),
    (
        "first model below macro-F1 floor",
        report([True] * 90 + [False] * 10, f1={"a": 0.9, "b": 0.5}),
        None,
        False,
        "macro-F1 floor",
    ),
    ("equal models", report([True] * 90 + [False] * 10), report([True] * 90 + [False] * 10), True, None),
    ("better challenger", report([True] * 95 + [False] * 5), report([True] * 85 + [False] * 15), True, None),
    (
        "slightly worse, not significant",
        report([True] * 88 + [False] * 12),
        report([True] * 90 + [False] * 10),
        True,
        None,
    ),
    (
        "significantly worse",
        report([True] * 70 + [False] * 30, f1=SAME_F1),
        report([True] * 95 + [False] * 5, f1=SAME_F1),
        False,
        "not significantly worse",
    ),
    ("one intent collapses", *COLLAPSE, False, "per-intent F1"),
    ("one intent drops within noise: a warning", *NOISE, True, None),
    (
        "an F1 drop the paired examples do not show",
        report([True] * 90 + [False] * 10, f1={"a": 0.95, "b": 0.70}),
        report([True] * 90 + [False] * 10, f1={"a": 0.90, "b": 0.90}),
        True,
        None,
    ),
    (
        "over latency budget (CPU time per query)",
        report([True] * 95 + [False] * 5, cpu_p95=80.0, wall_p95=85.0),
        report([True] * 90 + [False] * 10),
        False,
        "latency",
    ),
    (
        "busy machine: wall clock over budget, CPU time within",
        report([True] * 95 + [False] * 5, cpu_p95=14.0, wall_p95=120.0),
        report([True] * 90 + [False] * 10, cpu_p95=14.0, wall_p95=130.0),
        True,
        None,
    ),
    (
        "first model on a busy machine",
        report([True] * 90 + [False] * 10, cpu_p95=14.0, wall_p95=200.0),
        None,
        True,
        None,
    ),
    (
        "different test sets",
        report([True] * 95 + [False] * 5, digest="A"),
        report([True] * 90 + [False] * 10, digest="B"),
        False,
        "same test set",
    ),
]


@pytest.mark.parametrize(("name", "challenger", "champion", "passes", "failing"), CASES, ids=[c[0] for c in CASES])
def test_gate_table(name, challenger, champion, passes, failing):
    decision = decide(challenger, champion, CFG)
    assert decision.passed is passes, decision.reasons
    failed = [c.name for c in decision.checks if not c.passed]
    assert failed == ([failing] if failing else [])
    if failing:
        assert decision.reasons and decision.reasons[0].startswith(failing)


def test_a_drop_within_noise_is_a_warning_and_a_real_one_names_its_evidence():
    noise = decide(*NOISE, CFG)
    (check,) = [c for c in noise.checks if c.name == "per-intent F1"]
    assert check.passed and "warning, a drop within noise" in check.detail and "b 0.900→0.840" in check.detail
    collapse = decide(*COLLAPSE, CFG)
    assert collapse.reasons == [
        "per-intent F1: lost more than 0.05 F1, significantly (p < 0.025): "
        "b 0.900→0.700 (only the champion right on 15, only the challenger on 0; p=3.1e-05)"
    ]


def test_new_intents_are_reported_with_their_test_support_and_not_gated():
    """What the retrain was for: intents the champion does not know, scored on the grown test set."""
    champion = report([True] * 100, f1={"a": 0.9, "b": 0.9, "c": 0.0, "d": 0.0}, intents=["a", "b"])
    challenger = report([True] * 100, f1={"a": 0.9, "b": 0.9, "c": 0.75, "d": 0.0}, support={"c": 12, "d": 0})
    decision = decide(challenger, champion, CFG)
    (check,) = [c for c in decision.checks if c.name == "new intents"]
    assert decision.passed and check.passed
    untested = "warning, no test example yet (not evaluated): d"
    assert check.detail == f"2 new: F1 on 12 test examples: c 0.750 (12); {untested}"
    same = report([True] * 100, intents=["a", "b"])
    assert "new intents" not in [c.name for c in decide(same, same, CFG).checks]


def _with_out_of_scope(report_: EvaluationReport, handed_off: int, n: int = 20) -> EvaluationReport:
    """``report_`` plus ``n`` out-of-scope test examples, the first ``handed_off`` of them handed off."""
    extra = [Outcome(f"o{i}", "oos", "a", 0.5, i < handed_off) for i in range(n)]
    return dataclasses.replace(
        report_, examples=report_.examples + extra, out_of_scope=OutOfScope("oos", handed_off / n, n)
    )


@pytest.mark.parametrize(
    ("champion_caught", "challenger_caught", "passes"),
    [(16, 16, True), (16, 14, True), (16, 8, False)],  # the same; two fewer (noise); half lost: a new sink
)
def test_out_of_scope_hand_off_is_paired_against_the_champion(champion_caught, challenger_caught, passes):
    champion = _with_out_of_scope(report([True] * 100), champion_caught)
    challenger = _with_out_of_scope(report([True] * 100), challenger_caught)
    decision = decide(challenger, champion, CFG)
    (check,) = [c for c in decision.checks if c.name == "out-of-scope hand-off"]
    assert check.passed is passes and decision.passed is passes
    assert f"only the champion handed off {champion_caught - challenger_caught}" in check.detail


def test_a_first_model_must_hand_off_enough_out_of_scope_messages():
    assert decide(_with_out_of_scope(report([True] * 100), 12), None, CFG).passed
    low = decide(_with_out_of_scope(report([True] * 100), 6), None, CFG)
    assert low.reasons == [
        "out-of-scope recall floor: 0.300 of 20 out-of-scope messages handed off (floor 0.50; no champion yet)"
    ]


def test_intent_with_little_support_is_not_gated():
    champion = report([True] * 90 + [False] * 10, f1={"a": 0.9, "b": 0.9}, support={"b": 5})
    challenger = report([True] * 90 + [False] * 10, f1={"a": 0.9, "b": 0.2})
    assert decide(challenger, champion, CFG).passed


def test_decision_renders_as_pull_request_body():
    decision = decide(report([True] * 70 + [False] * 30), report([True] * 95 + [False] * 5), CFG)
    md = render_markdown(decision)
    assert "REJECTED" in md and "| not significantly worse | **fail** |" in md
    as_dict = decision.to_dict()
    assert as_dict["passed"] is False and as_dict["reasons"]


@pytest.mark.parametrize("wall_p95", [12.0, 31.0, 400.0])
def test_verdict_does_not_depend_on_wall_clock_time(wall_p95):
    """The same two models, timed on a quiet and on a busy machine: the same verdict, check for check."""
    quiet = decide(report([True] * 95 + [False] * 5), report([True] * 90 + [False] * 10), CFG)
    busy = decide(
        report([True] * 95 + [False] * 5, wall_p95=wall_p95),
        report([True] * 90 + [False] * 10, wall_p95=wall_p95),
        CFG,
    )
    assert [(c.name, c.passed) for c in busy.checks] == [(c.name, c.passed) for c in quiet.checks]


def test_cpu_time_leaves_out_time_spent_waiting():
    """What a busy machine adds to a query is waiting for a core; the gate's figure must not count it."""

    class WaitingPredictor:
        def predict(self, texts):
            time.sleep(0.02)  # off the CPU, as a query is while another process holds the core
            return []

    lat = _latency(WaitingPredictor(), [f"t{i}" for i in range(10)], batch_seconds=1.0)
    assert lat.single_p50_ms >= 20.0
    assert lat.cpu_p95_ms < 10.0


@pytest.mark.parametrize(
    ("measured", "served", "passes"), [("onnx-int8", "onnx-int8", True), ("torch", "onnx-int8", False)]
)
def test_the_challenger_must_be_measured_on_the_runtime_its_artifact_serves(measured, served, passes):
    """What passes the gate must be what users get: a report of another runtime than the served one is rejected."""
    challenger = dataclasses.replace(report([True] * 95 + [False] * 5), runtime=measured, served_runtime=served)
    decision = decide(challenger, report([True] * 90 + [False] * 10), CFG)
    (check,) = [c for c in decision.checks if c.name == "served runtime"]
    assert (check.passed, decision.passed) == (passes, passes)
    assert check.detail.startswith(f"measured on {measured}") and (
        passes or f"the artifact serves {served}" in check.detail
    )
    assert f"(measured on {measured})" in render_markdown(decision)
