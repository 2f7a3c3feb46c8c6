"""The whole loop on a tiny configuration: every stage's outcome, and the mirror case (a bad canary rolled back).

Real parts throughout: `flywheel serve` and `flywheel collect` as processes on loopback ports, the
MLflow registry on SQLite, a local Git repository standing in for GitHub, Evidently's drift check.
Only the encoder is tiny (a random 2-layer BERT) so training takes seconds.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess

import pandas as pd
import pytest
import yaml

from model.core.settings import load_config
from model.data.conversations import read_snapshot
from model.deploy import manifests
from model.deploy.argocd_health import inferenceservice_health
from model.loop.configs import load_configs
from model.loop.orchestrator import without_github
from model.loop.record import LoopRecord
from model.loop.stages import Loop
from scripts.cli import main
from tests.helpers.data import write_subset

# loop.json's top-level keys, in order: what the report and other readers of the record rely on
LOOP_JSON_KEYS = (
    "dataset",
    "started_at",
    "stages",
    "events",
    "pull_requests",
    "offline",
    "drift",
    "gate",
    "canary",
    "labelling",
    "intents",
    "traffic",
    "registry",
    "git_repo",
    "finished_at",
    "seconds",
)


def _config(tmp_path, tiny_bert, intents: list[str], **overrides) -> tuple:
    """Overrides for a tiny model and small traffic; ``overrides`` per section."""
    raw = {section: {} for section in ("train", "gate", "canary", "loop", "traffic")}
    raw["train"].update(
        base_model=str(tiny_bert),
        epochs=8,
        batch_size=16,
        learning_rate=1e-3,
        head_learning_rate=1e-2,
        freeze_embeddings=False,
        fallback_precision=0.6,  # a tiny model handed nearly everything off at 0.9: too few rated answers
    )
    # speed is not tested here, nor how well a random 2-layer model tells out-of-scope messages apart
    raw["gate"].update(latency_budget_ms=10_000, min_accuracy=0.3, min_macro_f1=0.2, min_oos_recall=0.0)
    raw["canary"].update(
        min_requests_per_arm=60,
        min_ratings_per_arm=15,
        error_rate_margin=0.05,
        fallback_rate_margin=0.1,
        escalation_rate_margin=0.1,
        thumbs_down_margin=0.1,
        latency_budget_ms=10_000,
    )
    raw["loop"].update(
        held_back_intents=intents[-2:],
        requests_before_shift=150,
        requests_after_shift=200,
        new_intent_share=0.5,
        label_budget=80,
        annotator_error_rate=0.0,
        canary_percent=50,
        look_requests=250,
        max_looks=12,
        requests_after_release=50,
    )
    raw["traffic"].update(concurrency=4)
    for section, values in overrides.items():
        raw.setdefault(section, {}).update(values)
    path = tmp_path / "loop.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, raw


@pytest.fixture
def subset(tmp_path, sample_df):
    path = write_subset(sample_df, tmp_path / "subset.csv", n_intents=6)
    return path, sorted(set(pd.read_csv(path)["intent"]) - {"oos"})


def _isvc(repo) -> manifests.Rollout:
    return manifests.read_rollout(manifests.isvc_path(repo, "production"))


def test_whole_loop_finds_drift_retrains_and_promotes_the_canary(tmp_path, tiny_bert, subset, capsys):
    data, intents = subset
    config, raw = _config(tmp_path, tiny_bert, intents)
    out = tmp_path / "loop"
    code = main(["demo", "--config", str(config), "--dataset", str(data), "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err[-3000:]
    record = yaml.safe_load((out / "loop.json").read_text())  # JSON is YAML

    assert [s["status"] for s in record["stages"]] == ["done"] * 9
    assert list(record) == [f.name for f in dataclasses.fields(LoopRecord)] == list(LOOP_JSON_KEYS)
    assert record["intents"]["held_back"] == intents[-2:]
    # 1. first model: registered, released (straight to stable: nothing served yet), champion
    # 3. drift found, retrain pull request made
    assert record["drift"]["drift"] is True and record["drift"]["reasons"]
    kinds = [pr["kind"] for pr in record["pull_requests"]]
    assert kinds == ["release", "retrain", "release", "promote"]
    repo = out / "gitops-repo"
    subjects = subprocess.run(
        ["git", "log", "--format=%s", "main"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert len(subjects) == 5 and subjects[-1].startswith("Manifests")  # one commit per merged pull request
    assert subjects[2].startswith("Retrain: drift") and subjects[0].startswith("Promote flywheel-intent v2")
    assert list((repo / "retrain" / "requests").glob("*.json"))
    # 4. the reviewer labelled within budget, mostly held-back intents (the queue puts them first)
    labelling = record["labelling"]
    assert 0 < labelling["labelled"] <= 80 and labelling["wrong_labels"] == 0
    assert labelling["new_intent_labels"] > labelling["labelled"] / 2
    prepared = pd.read_parquet(next((out / "datasets").glob("retrain-*/examples.parquet")))
    assert set(intents[-2:]) <= set(prepared["intent"])  # the challenger learns the new intents
    # gate passed; the challenger does better on the full test set (it knows the new intents)
    assert record["gate"]["passed"] is True
    v1, v2 = record["offline"]
    assert (v1["model_version"], v2["model_version"]) == ("1", "2")
    assert v2["test_accuracy"] > v1["test_accuracy"]
    # 5. canary: traffic routed by the Knative model (a revision per model, the rolled-out one keeps the
    # rest), analysis promoted, manifest and registry follow; each sync printed the route and Argo CD's health
    progress = printed.err  # the demo's progress lines
    assert "-predictor-00002 (v2) 50%, " in progress and "-predictor-00001 (v1) 50%; Argo CD: Healthy" in progress
    assert "-predictor-00002 (v2) 100%; Argo CD: Healthy" in progress
    traffic = pd.read_parquet(out / "traffic.parquet")
    canary_phase = traffic[traffic["phase"].str.startswith("canary-look")]
    share = (canary_phase["arm"] == "canary").mean()
    assert abs(share - 0.5) < 4 * (0.25 / len(canary_phase)) ** 0.5
    assert set(canary_phase.loc[canary_phase["arm"] == "canary", "model_version"]) == {"2"}
    assert record["canary"]["decision"] == "promote"
    rollout = _isvc(repo)
    assert rollout.stable.version == 2 and rollout.canary is None and rollout.previous.version == 1
    versions = {v["version"]: v["aliases"] for v in record["registry"]["versions"]}
    assert "champion" in versions[2] and "champion" not in versions[1]
    assert set(traffic.loc[traffic["phase"] == "after-release", "model_version"]) == {"2"}
    # everything the users did reached the store: feedback per request as the simulator recorded it
    snapshot = read_snapshot(out / "snapshots" / "shifted.parquet")
    sent = traffic[traffic["phase"] == "shifted"].set_index("request_id")
    stored = snapshot.set_index("request_id")
    assert len(stored) == len(sent)
    thumbs = sent["feedback"].map({"thumbs_up": "up", "thumbs_down": "down"}).fillna("")
    assert (stored.loc[sent.index, "thumbs"] == thumbs).all()
    # 6. the report
    html = (out / "report.html").read_text()
    outcome = f"v1 → drift found → v2 trained on {labelling['labelled']} labels → canary promoted"
    assert f'<p class="outcome" id="outcome">{outcome}</p>' in html
    assert 'id="chart-accuracy"' in html and subjects[0] in html


def test_whole_loop_rolls_back_a_worse_canary(tmp_path, tiny_bert, subset):
    """Mirror case: the challenger is trained with a learning rate far too high, and the gate is lax
    enough to let it through; the canary's users notice, and the loop rolls it back."""
    data, intents = subset
    config, _ = _config(tmp_path, tiny_bert, intents, gate={"alpha": 0.0, "max_f1_drop": 1.0})
    work = tmp_path / "loop"
    work.mkdir()
    cfgs = load_configs(config, load_config("loop", config), work)
    with without_github():
        loop = Loop(data, work, cfgs, progress=lambda line: None)
        world = loop.setup()
        try:
            first = loop.first_model(world)
            request = loop.traffic_and_drift(world)
            assert request is not None
            # a diverged fine-tune: what a mistyped learning rate does
            loop.cfgs.train = dataclasses.replace(loop.cfgs.train, learning_rate=0.5, head_learning_rate=5.0)
            challenger = loop.retrain(world, request, first)
            assert challenger.passed  # the lax gate lets it through
            decision = loop.canary(world, challenger.version)
            loop.after_release(world)
        finally:
            loop.close(world)
        report = loop.finish(world)
    record = json.loads((work / "loop.json").read_text())
    assert record == json.loads(json.dumps(loop.record.to_dict(), default=str))  # the file is the record
    assert decision == "rollback" == record["canary"]["decision"]
    assert any("higher on the canary" in r for r in record["canary"]["reasons"])
    assert [pr["kind"] for pr in record["pull_requests"]] == ["release", "retrain", "release", "rollback"]
    # the stand-in cluster routed as KServe does after the pin: v2's revision stays the newest, with 0%
    status = json.loads((work / "cluster" / "inferenceservice.json").read_text())
    predictor = status["status"]["components"]["predictor"]
    v1_rev, v2_rev = predictor["latestRolledoutRevision"], predictor["latestCreatedRevision"]
    assert (v1_rev[-6:], v2_rev[-6:]) == ("-00001", "-00002")
    assert [(t["revisionName"], t["percent"]) for t in predictor["traffic"]] == [(v2_rev, 0), (v1_rev, 100)]
    assert inferenceservice_health(status).status == "Healthy"
    rollout = _isvc(work / "gitops-repo")  # pinned: v1's revision takes everything, v2's takes nothing
    assert (rollout.stable.version, rollout.canary, rollout.canary_percent, rollout.rolled_back.version) == (
        1,
        None,
        0,
        2,
    )
    versions = {v["version"]: v["aliases"] for v in record["registry"]["versions"]}
    assert "champion" in versions[1] and "champion" not in versions[2]
    traffic = pd.read_parquet(record["traffic"])
    assert set(traffic.loc[traffic["phase"] == "after-release", "model_version"]) == {"1"}
    assert "→ canary rolled back</p>" in report.read_text()
