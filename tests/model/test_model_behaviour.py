"""Model-behaviour tests: fine-tune the real MiniLM on a slice of the sample data, then check what
it learned (intents and entities, also as `flywheel serve` answers them), and that the gate tells a
good model from one trained on shuffled labels."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from model.artifact.predictor import IntentPredictor
from model.core.config import DataConfig, GateConfig, TrainConfig
from model.evaluate.evaluation import evaluate
from model.evaluate.gate import decide
from model.evaluate.steps import evaluation_set
from model.train.steps import train_step
from tests.helpers.data import write_subset
from tests.helpers.registry import local_registry
from tests.helpers.serving import free_port, start_server, stop_server, wait_ready

pytestmark = pytest.mark.slow
FAST_MINILM = TrainConfig(epochs=3, batch_size=16)


@pytest.fixture(scope="module")
def slice_data(tmp_path_factory, sample_df) -> Path:
    return write_subset(sample_df, tmp_path_factory.mktemp("slice") / "slice.csv", n_intents=8)


def _train(root: Path, data: Path, cfg: TrainConfig, name: str) -> IntentPredictor:
    """A model only the gate reads: PyTorch runs it, so no ONNX export (``good``'s is checked when trained)."""
    work = root / "work"
    cfg = dataclasses.replace(cfg, export_onnx=False)
    summary, _ = train_step(data, DataConfig(), cfg, local_registry(work), work, root / name)
    return IntentPredictor.load(summary.artifact)


@pytest.fixture(scope="module")
def good_artifact(tmp_path_factory, slice_data) -> Path:
    root = tmp_path_factory.mktemp("good")
    work = root / "work"
    return Path(
        train_step(slice_data, DataConfig(), FAST_MINILM, local_registry(work), work, root / "good")[0].artifact
    )


@pytest.fixture(scope="module")
def good(good_artifact) -> IntentPredictor:
    return IntentPredictor.load(good_artifact)


@pytest.fixture(scope="module")
def test_set(slice_data) -> pd.DataFrame:
    return evaluation_set(slice_data, DataConfig(), "test")


def test_fine_tuned_minilm_learns_the_intents(good, test_set):
    report = evaluate(good, test_set)
    assert report.accuracy >= 0.85, report.confused_pairs
    assert report.macro_f1 >= 0.80


def test_fine_tuned_minilm_finds_the_entities(good, test_set):
    """On a slice of the sample data (30 test spans, 3 epochs) the regular formats are learned;
    free-text product names need more data than this slice has (the demo's full sample data).

    Scored on the messages the bot answers (in scope): the slice's tag head has never seen an
    out-of-scope text (they are never trained on) and tags a few of their words as something
    ("Everest", "144"), which type it picks among near-equal guesses being a coin toss. Those
    messages are handed off; the full report scores them too."""
    report = evaluate(good, test_set[test_set["intent"] != "oos"])
    per_type = report.entities.per_type
    assert set(per_type) >= {"order_id", "invoice_number", "product"}
    assert per_type["order_id"].f1 >= 0.80, per_type
    (answer,) = good.predict(["please cancel order #NW88412, I ordered the wrong size"])
    assert [(e.type, e.text) for e in answer.entities] == [("order_id", "NW88412")]


def test_served_answers_carry_the_entities_on_both_protocols(good_artifact, good, tmp_path):
    text = "can you cancel order #NW70215 please"
    (offline,) = good.predict([text])
    assert [(e.type, e.text) for e in offline.entities] == [("order_id", "NW70215")]
    expected = [e.to_dict() for e in offline.entities]
    port = free_port()
    proc = start_server(["--stable", str(good_artifact)], tmp_path, port)
    base = f"http://127.0.0.1:{port}/v{{}}/models/intent-test"
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}", tmp_path)
        v1 = httpx.post(base.format(1) + ":predict", json={"instances": [text]}, timeout=30).json()
        v2_body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}]}
        v2 = httpx.post(base.format(2) + "/infer", json=v2_body, timeout=30).json()
    finally:
        stop_server(proc)
    (prediction,) = v1["predictions"]
    assert prediction["intent"] == offline.intent and prediction["entities"] == expected
    assert [e["text"] for e in prediction["entities"]] == [text[e["start"] : e["end"]] for e in expected]
    outputs = {o["name"]: o for o in v2["outputs"]}
    assert outputs["entities"]["datatype"] == "BYTES"
    assert [json.loads(x) for x in outputs["entities"]["data"]] == [expected]


def test_out_of_scope_messages_get_lower_confidence(good, test_set, sample_df):
    oos = sample_df.loc[sample_df["intent"] == "oos", "text"].tolist()
    in_scope = test_set.loc[test_set["intent"] != "oos", "text"].tolist()
    oos_conf = np.mean([p.confidence for p in good.predict(oos)])
    in_conf = np.mean([p.confidence for p in good.predict(in_scope)])
    assert oos_conf < in_conf
    assert np.mean([p.fallback for p in good.predict(oos)]) > np.mean([p.fallback for p in good.predict(in_scope)])


def test_intent_is_invariant_to_case_and_politeness(good, test_set):
    texts = test_set.loc[test_set["intent"] != "oos", "text"].tolist()
    base = [p.intent for p in good.predict(texts)]
    variants = [p.intent for p in good.predict([f"hi, {t.lower()} thanks" for t in texts])]
    assert np.mean([a == b for a, b in zip(base, variants)]) >= 0.85


def test_gate_rejects_shuffled_labels_and_accepts_a_better_model(tmp_path, slice_data, good, test_set):
    df = pd.read_csv(slice_data, dtype=str, keep_default_na=False)
    rng = np.random.default_rng(0)
    in_scope = df["intent"] != "oos"
    df.loc[in_scope, "intent"] = rng.permutation(df.loc[in_scope, "intent"].to_numpy())
    shuffled_csv = tmp_path / "shuffled.csv"
    df.to_csv(shuffled_csv, index=False)
    shuffled = _train(tmp_path, shuffled_csv, FAST_MINILM, "shuffled")
    weak = _train(tmp_path, slice_data, TrainConfig(max_steps=1, batch_size=16, learning_rate=1e-6), "weak")

    cfg = GateConfig(latency_budget_ms=1000)
    good_report = evaluate(good, test_set)
    rejected = decide(evaluate(shuffled, test_set), good_report, cfg)
    assert not rejected.passed
    assert any(r.startswith("not significantly worse") for r in rejected.reasons)

    weak_report = evaluate(weak, test_set)
    accepted = decide(good_report, weak_report, cfg)
    assert good_report.accuracy >= weak_report.accuracy
    assert accepted.passed, accepted.reasons
