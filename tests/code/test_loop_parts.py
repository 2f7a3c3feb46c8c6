"""The closed loop's parts that need no server: data plan, traffic draw, reviewer, stand-in repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from model.core.config import DEFAULT_CONFIG, PROJECT_ROOT, SAMPLE_DATA, DataConfig, DeliveryConfig, LoopConfig
from model.core.errors import FlywheelError
from model.core.git import git
from model.data.examples import assign_splits, in_test_share, load_examples
from model.deploy.delivery import request_retrain_step
from model.loop import annotator
from model.loop.plan import draw_traffic, plan_data, response_catalog, split_intents
from model.loop.report import git_history
from model.loop.stand_in import StandInRepo
from model.loop.world import AFTER_RELEASE, BEFORE_SHIFT, SHIFTED, canary_look
from model.prepare.review_queue import read_labels
from model.serve.catalog import ResponseCatalog


@pytest.fixture
def split_df():
    return assign_splits(load_examples(SAMPLE_DATA, DataConfig()), DataConfig())


def test_split_intents_holds_back_a_seeded_share(split_df):
    known, held = split_intents(split_df, LoopConfig(held_back_fraction=0.25, seed=3), "oos")
    intents = set(split_df["intent"]) - {"oos"}
    assert set(known) | set(held) == intents and not set(known) & set(held)
    assert len(held) == round(len(intents) * 0.25)
    assert split_intents(split_df, LoopConfig(held_back_fraction=0.25, seed=3), "oos") == (known, held)
    named = split_intents(split_df, LoopConfig(held_back_intents=[known[0]]), "oos")[1]
    assert named == [known[0]]


def test_split_intents_refuses_unknown_names_and_bad_fractions(split_df):
    with pytest.raises(FlywheelError, match="not in the dataset: no_such_intent"):
        split_intents(split_df, LoopConfig(held_back_intents=["no_such_intent"]), "oos")
    with pytest.raises(FlywheelError, match="held_back_fraction"):
        split_intents(split_df, LoopConfig(held_back_fraction=1.0), "oos")


def test_plan_data_keeps_held_back_intents_and_test_texts_out_of_the_seed_set(split_df):
    known, held = split_intents(split_df, LoopConfig(seed=1), "oos")
    plan = plan_data(split_df, known, LoopConfig(seed_fraction=0.5, seed=1), DataConfig())
    seed, pool, test = plan.seed, plan.pool, plan.test
    assert not set(seed["intent"]) & set(held)
    assert set(pool["intent"]) >= set(held) | {"oos"}
    assert not set(seed.loc[seed["split"] == "train", "text"]) & set(pool["text"])  # users send texts it never saw
    # of the full test set, users send only held-back intents' texts that a label sends back to test
    sent = test[test["text"].isin(pool["text"])]
    assert len(sent) and set(sent["intent"]) <= set(held)
    assert all(in_test_share(t, DataConfig()) for t in sent["text"])
    assert set(test["intent"]) == set(split_df["intent"])  # the full test set covers every intent
    known_train = split_df[(split_df["split"] == "train") & split_df["intent"].isin(known)]
    assert abs((seed["split"] == "train").sum() - len(known_train) / 2) <= len(known)


def test_draw_traffic_honours_the_new_intent_share(split_df):
    known, held = split_intents(split_df, LoopConfig(seed=1), "oos")
    pool = plan_data(split_df, known, LoopConfig(seed=1), DataConfig()).pool
    before = draw_traffic(pool, 200, held, 0.0, seed=5)
    after = draw_traffic(pool, 200, held, 0.4, seed=5)
    assert len(before) == len(after) == 200
    assert not before["intent"].isin(held).any()
    assert after["intent"].isin(held).sum() == 80
    assert draw_traffic(pool, 200, held, 0.4, seed=5).equals(after)


def test_response_catalog_fills_in_intents_it_lacks(tmp_path):
    base = tmp_path / "responses.yaml"
    base.write_text("fallback: Passing you to a person.\nintents:\n  a: Reply A.\n")
    assert response_catalog(base, ["a"], tmp_path / "out.yaml") == base
    out = response_catalog(base, ["a", "b"], tmp_path / "out.yaml")
    catalog = ResponseCatalog.load(out)
    catalog.check_covers(["a", "b"], "test")
    assert catalog.reply("a", False) == "Reply A." and "b" in catalog.reply("b", False)


def _queue(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "text": [f"message number {i}" for i in range(n)],
            "predicted_intent": "x",
            "confidence": [i / n for i in range(n)],
            "traffic": 1,
            "reasons": "fallback",
            "conversation_id": [f"c{i}" for i in range(n)],
            "request_id": [f"r{i}" for i in range(n)],
            "model_version": "1",
        }
    )


def test_annotator_labels_the_queue_head_from_the_truth_with_the_given_error_rate(tmp_path):
    queue = _queue(400)
    truth = {f"r{i}": ("a" if i % 2 else "b") for i in range(400)}
    items = annotator.pick(queue, queue, 300, "queue", seed=1)
    assert items["request_id"].tolist() == [f"r{i}" for i in range(300)]
    exact, stats = annotator.label(items, truth, ["a", "b", "c"], 0.0, seed=1)
    assert stats["wrong_labels"] == 0 and (exact["intent"] == exact["request_id"].map(truth)).all()
    noisy, stats = annotator.label(items, truth, ["a", "b", "c"], 0.2, seed=1)
    wrong = noisy["intent"] != noisy["request_id"].map(truth)
    assert stats["wrong_labels"] == int(wrong.sum()) and 30 <= wrong.sum() <= 90
    path = annotator.write_labels(noisy, tmp_path / "labels.csv")
    back = read_labels(path, {"a", "b", "c"})  # what prepare reads: the reviewer's file is a person's file
    assert back["intent"].tolist() == noisy["intent"].tolist()


def test_annotator_random_strategy_draws_distinct_logged_texts():
    logged = pd.concat([_queue(100), _queue(100)])  # every text twice
    items = annotator.pick(_queue(10), logged, 50, "random", seed=2)
    assert len(items) == 50 and items["text"].is_unique
    assert annotator.pick(_queue(10), logged, 50, "random", seed=2).equals(items)
    with pytest.raises(FlywheelError, match="label strategy"):
        annotator.pick(_queue(10), logged, 5, "smart", seed=2)
    with pytest.raises(FlywheelError, match="no ground truth"):
        annotator.label(_queue(3), {}, ["a"], 0.0, seed=1)


def test_each_batch_of_traffic_has_its_own_named_seeds():
    """Every batch draws its messages and its users' reactions from streams no other batch uses, with the
    numbers earlier loops were run with (the same loop.seed sends the same traffic as before)."""
    batches = [BEFORE_SHIFT, SHIFTED, *(canary_look(n) for n in range(1, LoopConfig().max_looks + 1)), AFTER_RELEASE]
    for seed in ("phase", "draw", "react"):
        assert len({getattr(b, seed) for b in batches}) == len(batches), seed
    assert [(b.draw, b.react) for b in (BEFORE_SHIFT, SHIFTED, canary_look(1), AFTER_RELEASE)] == [
        (0, 1),
        (1, 2),
        (11, 11),
        (99, 99),
    ]
    pool = pd.DataFrame({"text": [f"t{i}" for i in range(50)], "intent": ["a", "b"] * 25})
    drawn = [draw_traffic(pool, 20, [], 0.0, 7 + b.draw)["text"].tolist() for b in (BEFORE_SHIFT, SHIFTED)]
    assert drawn[0] != drawn[1]


def test_stand_in_repository_merges_one_commit_per_pull_request(tmp_path, monkeypatch):
    monkeypatch.delenv("GITHUB_TOKEN", raising=False)
    repo = StandInRepo.create(tmp_path / "repo")
    assert (repo.path / "manifests" / "production" / "inferenceservice.yaml").is_file()
    report = tmp_path / "drift.json"
    drift = {"drift": True, "reasons": ["fallback rate up"], "window": {"start": "a", "end": "b"}}
    report.write_text(json.dumps(drift))
    monkeypatch.setenv("GIT_AUTHOR_NAME", "t")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "t@localhost")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "t")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "t@localhost")
    result, _ = request_retrain_step(report, repo.path, DeliveryConfig())
    assert not (repo.path / result["request_file"]).exists()  # proposed, not merged
    commit = repo.merge(result["pull_request"]["branch"])
    assert (repo.path / result["request_file"]).is_file()
    log = git_history(repo.path)["log"]
    assert commit.startswith(log[0]["commit"]) and len(log) == 2
    assert log[0]["subject"].startswith("Retrain: drift")
    assert git(repo.path, "status", "--porcelain") == ""
    with pytest.raises(FlywheelError, match="already exists"):
        StandInRepo.create(repo.path)


def test_config_flag_is_not_read_by_kserve_on_import(tmp_path):
    """kserve parses sys.argv on import; `--config` once matched its `--configure_logging` and exited.

    `flywheel serve` imports kserve before it opens the artifact, so reaching our own error about the
    missing artifact (exit 2) means kserve was imported and left `--config` alone."""
    missing = tmp_path / "no-such-artifact"
    done = subprocess.run(
        [sys.executable, "-m", "scripts.cli", "serve", "--config", str(DEFAULT_CONFIG), "--stable", str(missing)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "FLYWHEEL_WORK_DIR": str(tmp_path / "work")},
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"{missing}: not a model artifact" in done.stderr
    assert "configure_logging" not in done.stderr
