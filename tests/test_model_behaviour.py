"""Model-behaviour tests: fine-tune the real MiniLM on a slice of the sample data, then check what
it learned, and that the gate tells a good model from one trained on shuffled labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from model.artifact.predictor import IntentPredictor
from model.core.config import DataConfig, GateConfig, TrainConfig
from model.evaluate.evaluation import evaluate
from model.evaluate.gate import decide
from model.evaluate.steps import evaluation_set
from model.train.steps import train_step
from tests.conftest import local_registry, write_subset

pytestmark = pytest.mark.slow
FAST_MINILM = TrainConfig(epochs=3, batch_size=16)


@pytest.fixture(scope="module")
def slice_data(tmp_path_factory, sample_df) -> Path:
    return write_subset(sample_df, tmp_path_factory.mktemp("slice") / "slice.csv", n_intents=8)


def _train(root: Path, data: Path, cfg: TrainConfig, name: str) -> IntentPredictor:
    work = root / "work"
    summary, _ = train_step(data, DataConfig(), cfg, local_registry(work), work, root / name)
    return IntentPredictor.load(summary["artifact"])


@pytest.fixture(scope="module")
def good(tmp_path_factory, slice_data) -> IntentPredictor:
    return _train(tmp_path_factory.mktemp("good"), slice_data, FAST_MINILM, "good")


@pytest.fixture(scope="module")
def test_set(slice_data) -> pd.DataFrame:
    return evaluation_set(slice_data, DataConfig(), "test")


def test_fine_tuned_minilm_learns_the_intents(good, test_set):
    report = evaluate(good, test_set)
    assert report["accuracy"] >= 0.85, report["confused_pairs"]
    assert report["macro_f1"] >= 0.80


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
    assert good_report["accuracy"] >= weak_report["accuracy"]
    assert accepted.passed, accepted.reasons
