"""Code tests: the gate as a pure function, one row per situation it must decide."""

from __future__ import annotations

import pytest

from model.config import GateConfig
from model.gate import decide, render_markdown

CFG = GateConfig(
    alpha=0.05, min_support=10, max_f1_drop=0.05, latency_budget_ms=50, min_accuracy=0.8, min_macro_f1=0.75
)


def report(correct: list[bool], *, digest="T", p95=10.0, f1=None, model="m"):
    """An evaluation report with the given per-example outcomes over intents a/b."""
    examples = [
        {
            "id": f"e{i}",
            "intent": "a" if i % 2 else "b",
            "predicted": ("a" if i % 2 else "b") if ok else "x",
            "confidence": 0.9,
            "fallback": False,
        }
        for i, ok in enumerate(correct)
    ]
    acc = sum(correct) / len(correct)
    f1 = f1 or {"a": acc, "b": acc}
    return {
        "test_digest": digest,
        "model_digest": model,
        "accuracy": acc,
        "macro_f1": sum(f1.values()) / len(f1),
        "latency": {"single_p95_ms": p95},
        "per_intent": {k: {"f1": v, "support": 50, "precision": v, "recall": v} for k, v in f1.items()},
        "examples": examples,
    }


SAME_F1 = {"a": 0.9, "b": 0.9}  # isolates the overall test from the per-intent one
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
    (
        "one intent collapses",
        report([True] * 90 + [False] * 10, f1={"a": 0.95, "b": 0.70}),
        report([True] * 90 + [False] * 10, f1={"a": 0.90, "b": 0.90}),
        False,
        "per-intent F1",
    ),
    (
        "over latency budget",
        report([True] * 95 + [False] * 5, p95=80.0),
        report([True] * 90 + [False] * 10),
        False,
        "latency",
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


def test_intent_with_little_support_is_not_gated():
    champion = report([True] * 90 + [False] * 10, f1={"a": 0.9, "b": 0.9})
    challenger = report([True] * 90 + [False] * 10, f1={"a": 0.9, "b": 0.2})
    champion["per_intent"]["b"]["support"] = 5
    assert decide(challenger, champion, CFG).passed


def test_decision_renders_as_pull_request_body():
    decision = decide(report([True] * 70 + [False] * 30), report([True] * 95 + [False] * 5), CFG)
    md = render_markdown(decision)
    assert "REJECTED" in md and "| not significantly worse | **fail** |" in md
    as_dict = decision.to_dict()
    assert as_dict["passed"] is False and as_dict["reasons"]
