"""flywheel drift: the verdict (a pure function), the Evidently measurements, the step and its CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

from data_checks.drift import _chi2_homogeneity, auc_threshold, decide, measure, sample_rows
from data_checks.embeddings import Embedder
from model.core.config import DriftConfig
from model.core.errors import FlywheelError
from model.data.conversations import write_snapshot
from scripts.cli import main
from tests.helpers.data import write_subset
from tests.helpers.snapshots import make_snapshot

CFG = DriftConfig(alpha=0.01, min_rate_change=0.02)
TEXT_OK = {"method": "auc", "score": 0.505, "n_reference": 5000, "n_current": 1000}


@pytest.mark.parametrize(
    "scores, drift, reason",
    [
        ({"text": TEXT_OK}, False, None),
        ({"text": {**TEXT_OK, "score": 0.56}}, True, "text embeddings"),
        (
            {"text": TEXT_OK, "confidence": {"method": "ks", "score": 0.006}},
            False,
            None,
        ),  # 0.006 > 0.01/2 (two signals)
        ({"text": TEXT_OK, "confidence": {"method": "ks", "score": 0.001}}, True, "confidence"),
        (
            {"text": TEXT_OK, "fallback_rate": {"method": "z", "score": 1e-9, "reference": 0.100, "current": 0.110}},
            False,
            None,
        ),
        (
            {"text": TEXT_OK, "fallback_rate": {"method": "z", "score": 1e-9, "reference": 0.10, "current": 0.14}},
            True,
            "10.0% -> 14.0%",
        ),
        ({"text": TEXT_OK, "escalation_rate": {"skipped": "no feedback"}}, False, None),
    ],
)
def test_decide(scores, drift, reason):
    decision = decide(scores, CFG)
    assert decision.drift is drift
    if reason:
        assert any(reason in r for r in decision.reasons)
    assert decision.skipped == {k: v["skipped"] for k, v in scores.items() if "skipped" in v}
    ran = len(scores) - len(decision.skipped)
    assert all(s.threshold == pytest.approx(CFG.alpha / ran) for s in decision.signals if s.name != "text")


def test_auc_threshold_shrinks_with_more_data():
    small, large = auc_threshold(500, 500, 0.01), auc_threshold(50_000, 50_000, 0.01)
    assert 0.5 < large < small < 0.6
    # about 1% of random classifiers' AUCs exceed it
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(500), np.zeros(500)]
    scores = rng.random((2000, 1000))
    # each row's ROC AUC at once, by ranks (Mann-Whitney U / n1 n2): the same figure as roc_auc_score
    aucs = (rankdata(scores, axis=1)[:, :500].sum(axis=1) - 500 * 501 / 2) / (500 * 500)
    assert aucs[0] == pytest.approx(roc_auc_score(y, scores[0]))
    assert np.mean(aucs > small) < 0.025


def _logs(n, rng, conf_shift=0.0, fallback=0.1):
    return pd.DataFrame(
        {
            "predicted_intent": rng.choice(list("abcdef"), n),
            "confidence": np.clip(rng.beta(8, 2, n) - conf_shift, 0, 1),
            "fallback": rng.random(n) < fallback,
            "thumbs": rng.choice(["up", "down", ""], n, p=[0.3, 0.1, 0.6]),
            "escalated": rng.random(n) < 0.05,
        }
    )


def test_measure_same_distribution_no_drift_and_shift_detected():
    rng = np.random.default_rng(1)
    ref_emb, cur_emb = rng.normal(size=(3000, 32)), rng.normal(size=(1500, 32))
    _, scores = measure(_logs(3000, rng), _logs(1500, rng), ref_emb, cur_emb, CFG)
    assert set(scores) == {
        "text",
        "predicted_intent",
        "confidence",
        "fallback_rate",
        "thumbs_down_rate",
        "escalation_rate",
    }
    assert not decide(scores, CFG).drift
    novel = cur_emb.copy()
    novel[:150] += 3.0  # 10% of the window from somewhere new
    _, scores = measure(_logs(3000, rng), _logs(1500, rng, conf_shift=0.2, fallback=0.2), ref_emb, novel, CFG)
    decision = decide(scores, CFG)
    assert decision.drift and {"text", "confidence", "fallback_rate"} <= {s.name for s in decision.signals if s.drifted}


def test_measure_without_predictions_skips_those_signals():
    rng = np.random.default_rng(2)
    _, scores = measure(
        pd.DataFrame(index=range(200)), _logs(200, rng), rng.normal(size=(200, 8)), rng.normal(size=(200, 8)), CFG
    )
    assert "skipped" in scores["predicted_intent"] and "skipped" in scores["thumbs_down_rate"]
    assert "score" in scores["text"]


def test_embedder_caches_on_disk(tmp_path, tiny_bert):
    texts = ["where is my parcel", "reset my password", "where is my parcel"]
    first = Embedder(str(tiny_bert), tmp_path)(texts)
    assert first.shape == (3, 32) and np.allclose(first[0], first[2])
    again = Embedder(str(tiny_bert), tmp_path)
    again._encode = lambda texts: (_ for _ in ()).throw(AssertionError("re-encoded a cached text"))
    assert np.allclose(again(texts[:2]), first[:2])


def _drift_cli(tiny_bert, report_dir, **flags) -> dict:
    """``flywheel drift`` with ``flags`` (``reference_events=`` is ``--reference-events``) and the tiny
    encoder: it exits 0; its drift.json."""
    args = [arg for name, value in flags.items() for arg in (f"--{name.replace('_', '-')}", str(value))]
    assert main(["drift", *args, "--encoder", str(tiny_bert), "--report-dir", str(report_dir)]) == 0
    return json.loads((report_dir / "drift.json").read_text())


def _as_training_csv(snapshot: pd.DataFrame, path):
    snapshot.rename(columns={"predicted_intent": "intent"})[["text", "intent"]].to_csv(path, index=False)
    return path


def _shifted(snapshot: pd.DataFrame) -> pd.DataFrame:
    """The same users asking for something else: other texts, and a model that is unsure of them."""
    other = snapshot.copy()
    other["text"] = [f"my {w} invoice shows a charge twice, order {i}" for i, w in enumerate(["blue", "red"] * 30)]
    other["confidence"], other["fallback"], other["thumbs"] = 0.3, True, "down"
    return other


@pytest.mark.parametrize("drifted", [False, True], ids=["same distribution", "shifted"])
def test_cli_drift_writes_report_and_the_right_verdict(tmp_path, sample_df, tiny_bert, drifted):
    """Two windows drawn from the same distribution are not drift; a window of other texts, handed off
    and rated down, is drift for the text, confidence, fallback and thumbs-down signals."""
    earlier = make_snapshot(sample_df, n=60, seed=1)
    in_scope = int((sample_df["intent"] != "oos").sum())  # every sample text, in the windows' style
    ref = _as_training_csv(make_snapshot(sample_df, n=in_scope, seed=2), tmp_path / "ref.csv")
    window = make_snapshot(sample_df, n=60)
    current = write_snapshot(_shifted(window) if drifted else window, tmp_path / "current.parquet")
    rd = tmp_path / "reports"
    earlier_path = write_snapshot(earlier, tmp_path / "earlier.parquet")
    result = _drift_cli(tiny_bert, rd, reference=ref, current=current, reference_events=earlier_path)
    assert len(result["signals"]) == 6
    flagged = {s["name"] for s in result["signals"] if s["drifted"] is True}
    assert result["drift"] is drifted, result["reasons"]
    if drifted:
        assert {"text", "confidence", "fallback_rate", "thumbs_down_rate"} <= flagged, result["reasons"]
    else:
        assert flagged == set() and result["reasons"] == []
    # the window compared, for `flywheel request-retrain` (no export metadata here: first to last event)
    assert result["window"] == {"start": "2026-11-20T00:00:00+00:00", "end": "2026-11-20T00:59:00+00:00"}
    assert (rd / "drift_evidently.html").stat().st_size > 10_000
    md = (rd / "drift.md").read_text()
    assert md.startswith("## Drift check:") and "| signal | method |" in md


@pytest.mark.parametrize("drifted", [False, True], ids=["same distribution", "shifted"])
def test_cli_drift_on_samples_keeps_the_verdict(tmp_path, sample_df, tiny_bert, drifted):
    """With sample_size under every side's length the step compares random samples of each: the same
    verdict as on the whole windows (the test above), and the result says how many rows it compared."""
    in_scope = int((sample_df["intent"] != "oos").sum())
    ref = _as_training_csv(make_snapshot(sample_df, n=in_scope, seed=2), tmp_path / "ref.csv")
    window = make_snapshot(sample_df, n=60)
    current = write_snapshot(_shifted(window) if drifted else window, tmp_path / "current.parquet")
    earlier = write_snapshot(make_snapshot(sample_df, n=60, seed=1), tmp_path / "earlier.parquet")
    flags = {"reference": ref, "current": current, "reference_events": earlier, "sample_size": 45}
    result = _drift_cli(tiny_bert, tmp_path / "reports", **flags)
    assert result["drift"] is drifted, result["reasons"]
    assert result["compared"] == {"reference": 45, "current": 45} and result["events"] == 60
    assert "random sample of 45 reference and 45 current rows" in (tmp_path / "reports" / "drift.md").read_text()


def test_sample_rows_is_seeded_without_replacement_and_in_order():
    frame = pd.DataFrame({"text": [f"t{i:03d}" for i in range(300)]})
    sample = sample_rows(frame, 50)
    assert len(sample) == 50 and sample["text"].is_unique and sample["text"].is_monotonic_increasing
    assert sample.equals(sample_rows(frame, 50)) and not sample.equals(frame.head(50))
    assert sample_rows(frame, 300) is frame
    with pytest.raises(FlywheelError, match="sample_size"):
        sample_rows(frame, 1)


def test_cli_drift_refuses_an_empty_window(tmp_path, sample_df, tiny_bert):
    ref = write_subset(sample_df, tmp_path / "ref.csv", n_intents=5)
    empty = write_snapshot(make_snapshot(sample_df, n=6).iloc[:0], tmp_path / "empty.parquet")
    assert main(["drift", "--reference", str(ref), "--current", str(empty), "--encoder", str(tiny_bert)]) == 2


def test_intent_test_is_a_two_sample_test():
    """Same distribution, many sparse intents: the homogeneity test rejects about alpha of the time."""
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.ones(60))
    intents = np.array([f"i{k}" for k in range(60)])
    rejections = sum(
        _chi2_homogeneity(
            pd.Series(rng.choice(intents, 3000, p=p)), pd.Series(rng.choice(intents, 1000, p=p)), None, 0.01
        )[1]
        for _ in range(300)
    )
    assert rejections <= 9  # 1% of 300 is 3
    shifted = p.copy()
    shifted[:6] = 0
    shifted /= shifted.sum()
    assert _chi2_homogeneity(
        pd.Series(rng.choice(intents, 3000, p=p)), pd.Series(rng.choice(intents, 1000, p=shifted)), None, 0.01
    )[1]
