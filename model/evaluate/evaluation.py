"""Offline evaluation of a predictor on a labelled test set: quality, calibration and latency."""

from __future__ import annotations

import hashlib
import time
from collections import Counter

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import precision_recall_fscore_support

from model.artifact.predictor import IntentPredictor, Prediction
from model.data.entities import parse_cell
from model.data.examples import dataset_digest
from model.evaluate.report import ConfusedPair, EvaluationReport, Latency, Outcome, OutOfScope, Scores, Span
from model.evaluate.spans import Key, entity_metrics, markdown_table

LATENCY_SAMPLES = 100  # single-query timings: enough for a stable p95, a few seconds on CPU


def example_id(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def evaluate(predictor: IntentPredictor, test: pd.DataFrame, oos_label: str = "oos") -> EvaluationReport:
    """Metrics of ``predictor`` on ``test`` (columns text, intent, optionally entities), with per-example outcomes.

    ``accuracy`` and ``macro_f1`` are top-1 over in-scope examples (the standard benchmark figures);
    ``answered_accuracy`` counts an in-scope example right only if it was answered (not handed off);
    ``out_of_scope.recall`` is the share of out-of-scope examples handed off. ``entities``
    (model.evaluate.spans: exact span match per type, and micro-averaged) is there only when the test
    set has entity spans or the model predicted some; then each outcome also holds its true and predicted spans.
    """
    texts, truth = test["text"].tolist(), test["intent"].tolist()
    start = time.perf_counter()
    preds = predictor.predict(texts)
    batch_seconds = time.perf_counter() - start
    predicted = np.array([p.intent for p in preds])
    confidence = np.array([p.confidence for p in preds])
    fallback = np.array([p.fallback for p in preds])
    truth_arr = np.array(truth)
    in_scope = truth_arr != oos_label
    correct = (predicted == truth_arr) & in_scope

    labels = sorted(set(truth_arr[in_scope]) | set(predictor.labels))
    p, r, f, s = precision_recall_fscore_support(
        truth_arr[in_scope], predicted[in_scope], labels=labels, zero_division=0
    )
    confused = Counter(
        (t, q) for t, q, ok, ins in zip(truth_arr, predicted, correct, in_scope) if ins and not ok
    ).most_common(10)
    true_spans, predicted_spans = _true_spans(test), [_keys(p) for p in preds]
    entities = entity_metrics(true_spans, predicted_spans)
    spans = zip(true_spans, predicted_spans) if entities is not None else ((None, None) for _ in texts)
    n_in = int(in_scope.sum())
    return EvaluationReport(
        n_examples=len(texts),
        n_in_scope=n_in,
        test_digest=dataset_digest(test.assign(split="test")),
        model_digest=predictor.digest,
        model_intents=list(predictor.labels),
        fallback_threshold=predictor.threshold,
        accuracy=float(correct.sum() / n_in) if n_in else float("nan"),
        # mean F1 over intents present in the test set (intents the model knows but the test lacks are skipped)
        macro_f1=float(f[s > 0].mean()) if n_in else float("nan"),
        answered_accuracy=float((correct & ~fallback).sum() / n_in) if n_in else float("nan"),
        fallback_rate=float(fallback.mean()),
        ece=expected_calibration_error(confidence[in_scope], correct[in_scope]),
        per_intent={
            name: Scores(precision=float(p[i]), recall=float(r[i]), f1=float(f[i]), support=int(s[i]))
            for i, name in enumerate(labels)
        },
        confused_pairs=[ConfusedPair(true=t, predicted=q, count=c) for (t, q), c in confused],
        latency=_latency(predictor, texts, batch_seconds),
        examples=[
            Outcome(example_id(t), y, q, round(float(c), 5), bool(b), _spans(want), _spans(got))
            for t, y, q, c, b, (want, got) in zip(texts, truth, predicted, confidence, fallback, spans)
        ],
        entities=entities,
        out_of_scope=(
            # which examples the gate's out-of-scope check pairs, and the share handed off
            OutOfScope(oos_label, float(fallback[~in_scope].mean()), int((~in_scope).sum()))
            if (~in_scope).any()
            else None
        ),
    )


def _true_spans(test: pd.DataFrame) -> list[list[Key]]:
    """Each example's true spans from the ``entities`` column (none when the column is missing)."""
    if "entities" not in test.columns:
        return [[] for _ in range(len(test))]
    return [
        [(s["type"], s["start"], s["end"]) for s in parse_cell(cell, text, f"test example {i} ({text[:40]!r})")]
        for i, (text, cell) in enumerate(zip(test["text"], test["entities"]))
    ]


def _keys(prediction: Prediction) -> list[Key]:
    return [(e.type, e.start, e.end) for e in prediction.entities]


def _spans(keys: list[Key] | None) -> list[Span] | None:
    """Spans as an outcome keeps them: offsets and type only (the text is in the test set)."""
    return None if keys is None else [Span(start, end, kind) for kind, start, end in keys]


def _latency(predictor: IntentPredictor, texts: list[str], batch_seconds: float) -> Latency:
    """Single-query timings: CPU time on one thread (what the gate decides on) and wall time (for reading).

    The CPU time a query costs barely moves when other processes share the machine (MiniLM on 2 cores:
    p95 13-14 ms alone, 14-15 ms beside two CPU burners), while its wall time doubled (13 -> 31 ms);
    so a budget on CPU time gives the same verdict on a quiet and a busy machine. The inference runs
    on the calling thread only (PyTorch held to one thread, ONNX Runtime runs are single-threaded),
    so that thread's CPU time is the whole cost of the query.
    """
    sample = texts[:LATENCY_SAMPLES]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        predictor.predict(sample[:5])  # warm-up: first calls pay for allocation
        cpu, wall = [], []
        for text in sample:
            started_cpu, started = time.thread_time(), time.perf_counter()
            predictor.predict([text])
            cpu.append((time.thread_time() - started_cpu) * 1000)
            wall.append((time.perf_counter() - started) * 1000)
    finally:
        torch.set_num_threads(threads)
    return Latency(
        cpu_p50_ms=float(np.percentile(cpu, 50)),
        cpu_p95_ms=float(np.percentile(cpu, 95)),
        single_p50_ms=float(np.percentile(wall, 50)),
        single_p95_ms=float(np.percentile(wall, 95)),
        batch_queries_per_s=float(len(texts) / batch_seconds) if batch_seconds > 0 else float("inf"),
    )


def render_markdown(report: EvaluationReport, title: str = "Evaluation") -> str:
    lat, oos = report.latency, report.out_of_scope
    lines = [
        f"### {title}",
        "",
        "| metric | value |",
        "|---|---|",
        f"| examples (in scope) | {report.n_examples} ({report.n_in_scope}) |",
        f"| accuracy | {report.accuracy:.4f} |",
        f"| macro-F1 | {report.macro_f1:.4f} |",
        f"| answered accuracy (fallback at {report.fallback_threshold:.3f}) | {report.answered_accuracy:.4f} |",
        f"| fallback rate | {report.fallback_rate:.4f} |",
        *([f"| out-of-scope recall ({oos.n} examples) | {oos.recall:.4f} |"] if oos else []),
        f"| expected calibration error | {report.ece:.4f} |",
        f"| CPU time p50 / p95 (one query, one thread) | {lat.cpu_p50_ms:.1f} / {lat.cpu_p95_ms:.1f} ms |",
        f"| latency p50 / p95 (one query, wall clock) | {lat.single_p50_ms:.1f} / {lat.single_p95_ms:.1f} ms |",
        f"| batch throughput | {lat.batch_queries_per_s:.0f} queries/s |",
        "",
    ]
    if report.entities is not None:
        lines += [*markdown_table(report.entities), ""]
    lines += [
        "<details><summary>Per intent</summary>",
        "",
        "| intent | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    for name, m in sorted(report.per_intent.items(), key=lambda kv: kv[1].f1):
        lines.append(f"| {name} | {m.precision:.3f} | {m.recall:.3f} | {m.f1:.3f} | {m.support} |")
    lines += ["", "</details>", ""]
    if report.confused_pairs:
        lines += ["Most confused (true → predicted):", ""]
        lines += [f"- {c.true} → {c.predicted}: {c.count}" for c in report.confused_pairs]
    return "\n".join(lines) + "\n"


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """Weighted mean gap between confidence and accuracy over equal-width confidence bins."""
    confidence = np.asarray(confidence, dtype=float)
    correct = np.asarray(correct, dtype=float)
    if confidence.size == 0:
        return 0.0
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(confidence[mask].mean() - correct[mask].mean())
    return float(ece)
