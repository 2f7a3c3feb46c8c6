"""Release, promote and rollback as pull requests: on a temporary copy of the manifests in its own Git
repository (never this project's Git), with a real MLflow registry holding gated tiny models. The same
steps on GitHub, against a stand-in for its REST API, are in tests/servers/test_forges.py."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from starlette.testclient import TestClient

from model.collect.collector import build_app
from model.core.config import PROJECT_ROOT, CanaryConfig, CollectorConfig
from model.core.errors import FlywheelError
from model.deploy import manifests
from model.deploy.canary_metrics import prometheus_arm_metrics
from model.deploy.checks import check_manifests
from model.deploy.delivery import (
    canary_analysis_step,
    promote_env_step,
    release_step,
    request_retrain_step,
    rollback_step,
)
from model.registry import versions
from scripts.cli import main
from tests.helpers.delivery import DCFG, ISVC, REG, drift_report, images_in, serving
from tests.helpers.events import feedback_event, inference_event
from tests.helpers.git import branches, git, merge


def rollout(repo: Path, env: str) -> manifests.Rollout:
    return manifests.read_rollout(repo / ISVC.format(env=env))


def test_release_promote_rollback_cycle(repo, store):
    digest = store
    # first release: no stable model yet, so v1 takes all traffic
    result, body = release_step("production", 1, 10, repo, reg_cfg=REG, dcfg=DCFG)
    pr = result["pull_request"]
    assert pr["mode"] == "local" and pr["branch"] == "flywheel/release-production-v1"
    assert git(repo, "rev-parse", "HEAD") == pr["base_sha"]  # the checked-out branch did not move
    assert git(repo, "status", "--porcelain") == ""  # the working tree was not touched
    assert git(repo, "rev-list", "--count", f"main..{pr['branch']}") == "1"
    assert git(repo, "diff", "--name-only", "main", pr["branch"]) == ISVC.format(env="production")
    assert git(repo, "log", "-1", "--format=%s", pr["branch"]) == "Release flywheel-intent v1 to production"
    assert "no canary phase" in git(repo, "log", "-1", "--format=%b", pr["branch"])
    assert "| stable | none | v1 " in body and digest in body
    merge(repo, pr["branch"])
    state = rollout(repo, "production")
    assert state.stable.version == 1 and state.stable.sha256 == digest and state.canary is None
    assert state.stable.storage_uri.endswith("/artifacts/" + Path(state.stable.storage_uri).name)
    assert Path(urlparse(state.stable.storage_uri).path, "MANIFEST.sha256").is_file()  # the URI is the sealed artifact
    assert (
        hashlib.sha256(Path(urlparse(state.stable.storage_uri).path, "MANIFEST.sha256").read_bytes()).hexdigest()
        == digest
    )

    # v2 on a 10% canary
    result, body = release_step("production", 2, 10, repo, reg_cfg=REG, dcfg=DCFG)
    merge(repo, result["pull_request"]["branch"])
    state = rollout(repo, "production")
    assert (state.stable.version, state.canary.version, state.canary_percent) == (1, 2, 10)
    assert "Puts v2 on 10% of production traffic" in body

    # promote: v2 stable, canary gone; production is the champion environment, but opening (or merging)
    # the pull request moves no alias: reconcile-registry does on main (tests/servers/test_reconcile.py)
    champion = versions.alias_version(REG, versions.CHAMPION)
    result, body = promote_env_step("production", None, repo, REG, DCFG)
    assert versions.alias_version(REG, versions.CHAMPION) == champion
    assert "registry" not in result and result["champion_on_merge"] == 2
    assert "`champion` moves to v2 once this merges" in body
    merge(repo, result["pull_request"]["branch"])
    state = rollout(repo, "production")
    assert (state.stable.version, state.canary, state.canary_percent, state.previous.version) == (2, None, None, 1)
    assert "    canaryTrafficPercent:" not in (repo / ISVC.format(env="production")).read_text()

    # rollback after the promotion: KServe's pin on v2's revision sends everyone back to v1's (no new
    # revision; tests/servers/test_knative_stand_in.py); champion follows once merged, not when proposed
    v1, v2 = state.previous, state.stable
    result, body = rollback_step("production", repo, REG, DCFG)
    assert versions.alias_version(REG, versions.CHAMPION) == champion
    assert "registry" not in result and result["champion_on_merge"] == 1
    assert "`champion` moves back to v1 once this merges" in body and "`canaryTrafficPercent: 0`" in body
    merge(repo, result["pull_request"]["branch"])
    assert rollout(repo, "production") == manifests.Rollout(stable=v1, canary_percent=0, rolled_back=v2)
    # one commit per pull request on main, each naming what it did
    subjects = git(repo, "log", "--format=%s").splitlines()
    assert subjects[:4] == [
        "Roll back production from v2 to v1",
        "Promote flywheel-intent v2 to stable in production",
        "Release flywheel-intent v2 to production on a 10% canary",
        "Release flywheel-intent v1 to production",
    ]


def test_rollback_of_a_running_canary_pins_the_stable_revision(repo, store):
    merge(repo, release_step("staging", 1, 25, repo, reg_cfg=REG, dcfg=DCFG)[0]["pull_request"]["branch"])
    before = (repo / ISVC.format(env="staging")).read_text()
    merge(repo, release_step("staging", 2, 25, repo, reg_cfg=REG, dcfg=DCFG)[0]["pull_request"]["branch"])
    champion = versions.alias_version(REG, versions.CHAMPION)
    result, body = rollback_step("staging", repo, REG, DCFG)
    assert result["ended_version"] == 2 and result["stable"] == 1
    assert "`canaryTrafficPercent: 0`" in body and "no cold start" in body
    merge(repo, result["pull_request"]["branch"])
    state = rollout(repo, "staging")  # the pin: v1 serves everyone from its revision at once
    assert (state.stable.version, state.canary, state.canary_percent, state.rolled_back.version) == (1, None, 0, 2)
    # rolled back again, it would restore v1's env under the pin (proposed here, not merged)
    restore, body = rollback_step("staging", repo, REG, DCFG)
    assert restore["stable"] == 1 and "restore v1's env under the pin" in body
    # releasing the rolled-back model again needs no new revision: it takes its share at once
    merge(repo, release_step("staging", 2, 25, repo, reg_cfg=REG, dcfg=DCFG)[0]["pull_request"]["branch"])
    assert rollout(repo, "staging").canary.version == 2 and rollout(repo, "staging").rolled_back is None
    assert "canaryTrafficPercent: 25" in (repo / ISVC.format(env="staging")).read_text() != before
    assert versions.alias_version(REG, versions.CHAMPION) == champion  # staging never moves the champion


def _assert_nothing_made(repo: Path, head: str, before: list[str]) -> None:
    assert git(repo, "rev-parse", "HEAD") == head
    assert branches(repo) == before
    assert git(repo, "status", "--porcelain") == ""


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda r: release_step("qa", 1, 10, r, reg_cfg=REG, dcfg=DCFG), "unknown environment 'qa'"),
        (lambda r: release_step("staging", 99, 10, r, reg_cfg=REG, dcfg=DCFG), "has no version 99"),
        (lambda r: release_step("staging", 3, 10, r, reg_cfg=REG, dcfg=DCFG), "has not passed the gate"),
        (lambda r: release_step("staging", 1, 101, r, reg_cfg=REG, dcfg=DCFG), "from 0 to 100"),
        (lambda r: release_step("staging", 1, -5, r, reg_cfg=REG, dcfg=DCFG), "from 0 to 100"),
        (lambda r: promote_env_step("staging", None, r, REG, DCFG), "no canary is running, nothing to promote"),
        (lambda r: rollback_step("staging", r, REG, DCFG), "nothing to roll back to"),
    ],
)
def test_bad_input_makes_no_branch_and_no_commit(repo, store, call, message):
    head, before = git(repo, "rev-parse", "HEAD"), branches(repo)
    with pytest.raises(FlywheelError, match=message):
        call(repo)
    _assert_nothing_made(repo, head, before)


def test_second_release_while_a_canary_runs_is_refused(repo, store):
    merge(repo, release_step("staging", 1, 10, repo, reg_cfg=REG, dcfg=DCFG)[0]["pull_request"]["branch"])
    merge(repo, release_step("staging", 2, 10, repo, reg_cfg=REG, dcfg=DCFG)[0]["pull_request"]["branch"])
    head, before = git(repo, "rev-parse", "HEAD"), branches(repo)
    with pytest.raises(FlywheelError, match="canary v2 is still running"):
        release_step("staging", 1, 10, repo, reg_cfg=REG, dcfg=DCFG)
    with pytest.raises(FlywheelError, match="the canary is v2, not v1"):
        promote_env_step("staging", 1, repo, REG, DCFG)
    _assert_nothing_made(repo, head, before)


def test_rerun_finds_its_open_proposal_and_a_different_change_is_refused(repo, store):
    first = release_step("staging", 1, 10, repo, reg_cfg=REG, dcfg=DCFG)[0]["pull_request"]
    merge(repo, first["branch"])
    proposed = release_step("staging", 2, 10, repo, reg_cfg=REG, dcfg=DCFG)[0]["pull_request"]
    head, before = git(repo, "rev-parse", "HEAD"), branches(repo)
    again = release_step("staging", 2, 10, repo, reg_cfg=REG, dcfg=DCFG)[0][
        "pull_request"
    ]  # e.g. the hourly workflow again
    assert again["existing"] and again["commit"] == proposed["commit"]
    with pytest.raises(FlywheelError, match="already has an open pull request with a different change"):
        release_step("staging", 2, 20, repo, reg_cfg=REG, dcfg=DCFG)
    _assert_nothing_made(repo, head, before)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda t: t.replace("    maxReplicas: 3\n", "    maxReplicas: 3\n    canaryTrafficPercent: 30\n"),
            "canaryTrafficPercent is set",
        ),
        (
            lambda t: t.replace("    maxReplicas: 3\n", "    maxReplicas: 3\n    maxReplica: 4\n"),
            "maxReplica: unknown field",
        ),
        (lambda t: t.replace("            port: 8080\n", "", 1), "V1HTTPGetAction"),
    ],
)
def test_hand_edited_invalid_manifest_is_refused(repo, store, edit, message):
    path = repo / ISVC.format(env="staging")
    path.write_text(edit(path.read_text()))
    git(repo, "commit", "-q", "-am", "edit by hand")
    head, before = git(repo, "rev-parse", "HEAD"), branches(repo)
    with pytest.raises(FlywheelError, match=message) as err:
        release_step("staging", 1, 10, repo, reg_cfg=REG, dcfg=DCFG)
    assert str(path) in str(err.value)
    _assert_nothing_made(repo, head, before)


@pytest.mark.real("promtool")  # check-manifests runs promtool
def test_cli_exit_codes_and_reports(repo, store, tmp_path, capsys):
    reports = tmp_path / "reports"
    common = ["--repo", str(repo), "--report-dir", str(reports)]
    assert main(["release", "--env", "staging", "--model-version", "1", "--canary", "10", *common]) == 0
    assert json.loads((reports / "release.json").read_text())["pull_request"]["branch"] == "flywheel/release-staging-v1"
    assert (reports / "release.md").read_text().startswith("## Release flywheel-intent v1 to staging")
    capsys.readouterr()
    assert main(["release", "--env", "staging", "--model-version", "1", "--canary", "150", *common]) == 2
    assert "--canary must be a whole number from 0 to 100, got 150" in capsys.readouterr().err
    assert main(["promote", "--env", "nowhere", *common]) == 2
    assert "argument --env: invalid choice: 'nowhere' (choose from 'staging', 'production')" in capsys.readouterr().err
    assert main(["check-manifests", "--repo", str(repo), "--report-dir", str(reports)]) == 0


def test_promote_without_env_is_refused_and_moves_nothing(repo, store, tmp_path, capsys):
    """Moving the alias alone is `flywheel set-champion`; `promote` is always a pull request for an environment."""
    head, champion = git(repo, "rev-parse", "HEAD"), versions.alias_version(REG, versions.CHAMPION)
    assert main(["promote", "--version", "2", "--repo", str(repo), "--report-dir", str(tmp_path)]) == 2
    assert "the following arguments are required: --env" in capsys.readouterr().err
    assert versions.alias_version(REG, versions.CHAMPION) == champion
    assert git(repo, "rev-parse", "HEAD") == head and branches(repo) == ["main"]
    assert not (tmp_path / "promote.json").exists()


def test_canary_analysis_reads_the_manifest_and_metrics(repo, store, tmp_path):
    merge(repo, release_step("production", 1, 10, repo, reg_cfg=REG, dcfg=DCFG)[0]["pull_request"]["branch"])
    merge(repo, release_step("production", 2, 10, repo, reg_cfg=REG, dcfg=DCFG)[0]["pull_request"]["branch"])
    metrics = tmp_path / "metrics.json"
    healthy = {
        "requests": 20000,
        "errors": 10,
        "fallbacks": 2000,
        "escalations": 600,
        "thumbs_up": 5000,
        "thumbs_down": 900,
        "latency_p99_ms": 40.0,
    }
    metrics.write_text(
        json.dumps(
            {"stable": {**healthy, "model_version": 1}, "canary": {**healthy, "thumbs_down": 2500, "model_version": 2}}
        )
    )
    result, md = canary_analysis_step("production", repo, cfg=CanaryConfig(), dcfg=DCFG, metrics=metrics)
    assert result["decision"] == "rollback" and result["canary_version"] == 2
    assert "thumbs-down rate is higher" in md
    # the analysis goes into the rollback pull request, and must be for this canary
    analysis = tmp_path / "canary-analysis.json"
    analysis.write_text(json.dumps(result))
    analysis.with_suffix(".md").write_text(md)
    _, body = rollback_step("production", repo, REG, DCFG, str(analysis))
    assert "Canary analysis (production): **ROLLBACK**" in body
    metrics.write_text(json.dumps({"stable": {**healthy, "model_version": 7}, "canary": healthy}))
    with pytest.raises(FlywheelError, match="stable metrics are for v7"):
        canary_analysis_step("production", repo, cfg=CanaryConfig(), dcfg=DCFG, metrics=metrics)


def test_canary_analysis_without_a_canary_says_so(repo, store):
    result, md = canary_analysis_step("staging", repo, cfg=CanaryConfig(), dcfg=DCFG)
    assert result["decision"] == "none" and "No canary is running" in md
    with pytest.raises(FlywheelError, match="exactly one of"):  # two sources are refused even with no canary
        canary_analysis_step(
            "staging",
            repo,
            cfg=CanaryConfig(),
            dcfg=DCFG,
            metrics=repo / "metrics.json",
            prometheus_url="http://127.0.0.1:9",
        )


class FakePrometheus(BaseHTTPRequestHandler):
    """Answers /api/v1/query like Prometheus, from a table of (arm, metric) → value."""

    values: dict
    queries: list

    def log_message(self, *args):
        pass

    def do_GET(self):
        url = urlparse(self.path)
        query = parse_qs(url.query)["query"][0]
        self.queries.append(query)
        arm = "canary" if 'model_version="2"' in query else "stable"  # the canary is version 2 below
        if "histogram_quantile" in query:
            metric = "p99"
        elif "flywheel_request_duration_seconds_count" in query:
            metric = "timed"
        elif 'le="' in query:  # a histogram bucket: only the predictor's bounds have series
            metric = "within " + query.split('le="')[1].split('"')[0]
        elif "flywheel_feedback_total" in query:
            metric = query.split('kind="')[1].split('"')[0]
        elif "flywheel_fallbacks_total" in query:
            metric = "fallbacks"
        elif "max_over_time(up{" in query:  # was the revision's queue-proxy scraped
            metric = "scraped"
        elif "http_server_request_duration_seconds_count" in query:  # queue-proxy's count
            metric = "errors" if 'http_response_status_code=~"5.."' in query else "requests"
        else:  # the model's own count: only whether it exists
            metric = "model_requests"
        value = self.values.get((arm, metric))
        result = [] if value is None else [{"metric": {}, "value": [1700000000, str(value)]}]
        data = json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_canary_analysis_from_prometheus(repo, store):
    merge(repo, release_step("staging", 1, 10, repo, reg_cfg=REG, dcfg=DCFG)[0]["pull_request"]["branch"])
    merge(repo, release_step("staging", 2, 10, repo, reg_cfg=REG, dcfg=DCFG)[0]["pull_request"]["branch"])
    values = {
        ("stable", "model_requests"): 29990,
        ("stable", "scraped"): 1,
        ("stable", "requests"): 30000.4,
        ("stable", "errors"): 12,
        ("stable", "fallbacks"): 3000,
        ("stable", "escalated"): 900,
        ("stable", "thumbs_up"): 8000,
        ("stable", "thumbs_down"): 1400,
        ("stable", "p99"): 0.041,
        ("stable", "timed"): 29988,
        ("stable", "within 0.1"): 29950,
        ("canary", "model_requests"): 2780,
        ("canary", "scraped"): 1,
        ("canary", "requests"): 3000,
        ("canary", "errors"): 240,
        ("canary", "fallbacks"): 300,
        ("canary", "thumbs_up"): 800,
        ("canary", "thumbs_down"): 140,
        ("canary", "p99"): 0.045,
        ("canary", "timed"): 2760,
        ("canary", "within 0.1"): 2755,
    }  # no escalation series on the canary yet: counts as 0
    queries: list = []
    with serving(type("Handler", (FakePrometheus,), {"values": values, "queries": queries})) as url:
        result, md = canary_analysis_step("staging", repo, cfg=CanaryConfig(), dcfg=DCFG, prometheus_url=url)
    assert result["arms"]["stable"]["requests"] == 30000 and result["arms"]["canary"]["escalations"] == 0
    assert result["arms"]["canary"]["latency_p99_ms"] == pytest.approx(45.0)
    assert (result["arms"]["stable"]["slow"], result["arms"]["canary"]["slow"]) == (38, 5)
    assert result["decision"] == "rollback" and "error rate is higher" in md
    assert all('namespace="flywheel-staging"' in q for q in queries)
    assert any('model_version="2"' in q for q in queries) and any('model_version="1"' in q for q in queries)
    assert not any("arm=" in q for q in queries)  # each revision labels itself "stable": versions tell them apart
    # the window starts at the merge that started the canary: seconds ago, so the one-minute floor applies
    assert all("[60s]" in q for q in queries)


def test_retrain_request_locally(repo, tmp_path):
    result, body = request_retrain_step(drift_report(tmp_path, True), repo, DCFG)
    pr = result["pull_request"]
    assert result["requested"] and result["request_file"].startswith("retrain/requests/")
    assert git(repo, "diff", "--name-only", "main", pr["branch"]) == result["request_file"]
    request = json.loads(git(repo, "show", f"{pr['branch']}:{result['request_file']}"))
    assert request["window"]["start"] == "2026-11-20T00:00:00Z" and request["reason"] == "drift"
    assert "## Drift report" in body and "2026-11-20T00:00:00Z to 2026-11-27T00:00:00Z" in body
    head, before = git(repo, "rev-parse", "HEAD"), branches(repo)
    result, _ = request_retrain_step(drift_report(tmp_path, False), repo, DCFG)
    assert result == {"requested": False, "drift": False}
    (tmp_path / "bad.json").write_text('{"drift": "maybe"}')
    with pytest.raises(FlywheelError, match="true/false 'drift' verdict"):
        request_retrain_step(tmp_path / "bad.json", repo, DCFG)
    _assert_nothing_made(repo, head, before)


def test_canary_analysis_from_the_collectors_store(repo, store, tmp_path, monkeypatch):
    """Per-arm counts read from what the collector stored: answers by model version; requests without an answer
    under arm unknown, since KServe's logger names no revision in them (the same ce-source from every one)."""
    now = datetime.now(UTC).replace(microsecond=0)
    merge(repo, release_step("staging", 1, 10, repo, reg_cfg=REG, dcfg=DCFG)[0]["pull_request"]["branch"])
    monkeypatch.setenv("GIT_COMMITTER_DATE", (now - timedelta(minutes=10)).isoformat())
    merge(repo, release_step("staging", 2, 10, repo, reg_cfg=REG, dcfg=DCFG)[0]["pull_request"]["branch"])
    store_url = f"sqlite:///{tmp_path / 'conversations.db'}"

    def call(client, rid: str, version: str, at: datetime, *, answered=True, fallback=False, took_ms=20):
        events = [inference_event("request", rid, {"instances": ["where is my order"]}, at)]
        if answered:
            pred = {"intent": "order_status", "confidence": 0.9, "fallback": fallback, "model_version": version}
            body = {"predictions": [pred]}
            events.append(inference_event("response", rid, body, at + timedelta(milliseconds=took_ms)))
        for headers, data in events:
            assert client.post("/", content=data, headers=headers).status_code == 200

    with TestClient(build_app(CollectorConfig(store_url=store_url))) as client:
        at = now - timedelta(minutes=5)
        for i in range(40):
            call(client, f"s{i}", "1", at, fallback=i < 4)
        for i in range(12):
            call(client, f"c{i}", "2", at, took_ms=250 if i < 3 else 20)  # 3 answers over 100 ms
        for i in range(3):
            call(client, f"e{i}", "2", at, answered=False)  # failed: the logger saw no 200, nor which revision
        call(client, "in-flight", "2", now, answered=False)  # may still be answered: not an error
        call(client, "before", "1", now - timedelta(minutes=30))  # before the canary: not counted
        for i in range(5):
            headers, data = feedback_event(f"fb{i}", at + timedelta(seconds=5), kind="thumbs_down", request_id=f"c{i}")
            assert client.post("/", content=data, headers=headers).status_code == 200

    result, md = canary_analysis_step("staging", repo, cfg=CanaryConfig(), dcfg=DCFG, store_url=store_url)
    stable, canary = result["arms"]["stable"], result["arms"]["canary"]
    assert (stable["requests"], stable["errors"], stable["fallbacks"], stable["model_version"]) == (40, 0, 4, 1)
    assert (canary["requests"], canary["errors"], canary["thumbs_down"], canary["model_version"]) == (12, 0, 5, 2)
    assert (result["arms"]["unknown"]["requests"], result["arms"]["unknown"]["errors"]) == (3, 3)  # not in-flight
    assert (stable["slow"], canary["slow"]) == (0, 3)
    assert result["decision"] == "hold" and "store" in md  # 12 and 40 requests: too little traffic to decide
    assert result["unattributed_errors"] == 3 and "Arm unknown: 3 calls were never answered" in md
    with pytest.raises(FlywheelError, match="exactly one of"):
        canary_analysis_step(
            "staging", repo, cfg=CanaryConfig(), dcfg=DCFG, prometheus_url="http://127.0.0.1:9", store_url=store_url
        )


def test_a_latency_budget_that_is_no_histogram_bucket_is_an_error_not_zero():
    """With no bucket at the budget every answer would count as slow and roll back a healthy canary."""
    values = {("stable", m): 500 for m in ("model_requests", "requests", "timed")} | {("stable", "scraped"): 1}
    # no series for le="0.09"
    with serving(type("Handler", (FakePrometheus,), {"values": values, "queries": []})) as url:
        with pytest.raises(FlywheelError, match='no series for .*le="0.09"'):
            prometheus_arm_metrics(url, "flywheel-staging", {"stable": 1}, 3600, slow_ms=90)


def test_the_delivery_steps_start_without_torch():
    """They run on a CI runner in seconds: nothing they import may bring PyTorch (the predictor, training)."""
    code = "import sys, model.deploy.steps; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "False"


IMAGE = "ghcr.io/flywheel-mlops/flywheel@sha256:" + "c" * 64


@pytest.mark.real("promtool")  # check-manifests runs promtool on the rules
def test_release_with_an_image_pins_predictor_and_collector_in_one_commit(repo, store):
    result, body = release_step("staging", 1, 10, repo, reg_cfg=REG, dcfg=DCFG, image=IMAGE)
    branch = result["pull_request"]["branch"]
    assert git(repo, "rev-list", "--count", f"main..{branch}") == "1"
    changed = set(git(repo, "diff", "--name-only", "main", branch).splitlines())
    assert changed == {ISVC.format(env="staging"), "manifests/staging/collector.yaml"}
    merge(repo, branch)
    for name in ("inferenceservice.yaml", "collector.yaml"):
        text = (repo / "manifests" / "staging" / name).read_text()
        assert f"image: {IMAGE}" in text and "flywheel:0.1.0" not in text
    assert result["image"] == IMAGE and IMAGE in body
    assert check_manifests(repo) == []
    assert (repo / "manifests" / "production" / "collector.yaml").read_text() == (
        PROJECT_ROOT / "manifests" / "production" / "collector.yaml"
    ).read_text()  # the other environment is untouched


def test_release_refuses_an_image_named_by_tag_before_anything_is_proposed(repo, store):
    with pytest.raises(FlywheelError, match="names a tag, which can be pushed again"):
        release_step("staging", 1, 10, repo, reg_cfg=REG, dcfg=DCFG, image="ghcr.io/flywheel-mlops/flywheel:0.2.0")
    assert branches(repo) == ["main"]


def _images(repo: Path, env: str) -> set[str]:
    return {i for name in ("inferenceservice.yaml", "collector.yaml") for i in images_in(
        (repo / "manifests" / env / name).read_text()
    )}  # fmt: skip


def test_production_carries_forward_the_digest_staging_ran(repo, store):
    """Staging's pinned image goes to production with the release, and the promotion keeps it."""
    merge(repo, release_step("staging", 1, 10, repo, reg_cfg=REG, dcfg=DCFG, image=IMAGE)[0]["pull_request"]["branch"])
    result, body = release_step("production", 1, 10, repo, reg_cfg=REG, dcfg=DCFG)
    assert result["image"] == IMAGE
    assert f"`{IMAGE}`, carried forward from staging (`manifests/staging/inferenceservice.yaml` on main" in body
    assert "where it serves v1" in body
    changed = set(git(repo, "diff", "--name-only", "main", result["pull_request"]["branch"]).splitlines())
    assert changed == {ISVC.format(env="production"), "manifests/production/collector.yaml"}
    merge(repo, result["pull_request"]["branch"])
    assert _images(repo, "production") == {IMAGE}
    # a new image in staging: production's next release takes it along, its promotion changes no image
    newer = IMAGE.replace("c" * 64, "d" * 64)
    merge(repo, release_step("staging", 2, 100, repo, reg_cfg=REG, dcfg=DCFG, image=newer)[0]["pull_request"]["branch"])
    merge(repo, release_step("production", 2, 10, repo, reg_cfg=REG, dcfg=DCFG)[0]["pull_request"]["branch"])
    assert _images(repo, "production") == {newer}
    result, body = promote_env_step("production", None, repo, REG, DCFG)
    assert result["image"] == newer and "unchanged: the canary's revision already runs it" in body
    assert git(repo, "diff", "--name-only", "main", result["pull_request"]["branch"]) == ISVC.format(env="production")


def test_no_digest_is_carried_from_an_unsettled_or_unpinned_staging(repo, store):
    # staging names its image by tag (never released with one): production's images stay, and the body says so
    result, body = release_step("production", 1, 10, repo, reg_cfg=REG, dcfg=DCFG)
    assert result["image"] is None and "no digest to carry forward" in body
    merge(repo, result["pull_request"]["branch"])
    assert _images(repo, "production") == {"ghcr.io/flywheel-mlops/flywheel:main"}
    # a canary runs in staging: the image its manifest names is the canary's, not its stable model's
    merge(repo, release_step("staging", 1, 10, repo, reg_cfg=REG, dcfg=DCFG, image=IMAGE)[0]["pull_request"]["branch"])
    merge(repo, release_step("staging", 2, 10, repo, reg_cfg=REG, dcfg=DCFG, image=IMAGE)[0]["pull_request"]["branch"])
    head, before = git(repo, "rev-parse", "HEAD"), branches(repo)
    with pytest.raises(FlywheelError, match="canary v2 runs in staging, so the image it names"):
        release_step("production", 2, 10, repo, reg_cfg=REG, dcfg=DCFG)
    _assert_nothing_made(repo, head, before)
    # an image given explicitly is what gets pinned, whatever staging runs
    other = IMAGE.replace("c" * 64, "e" * 64)
    result, body = release_step("production", 2, 10, repo, reg_cfg=REG, dcfg=DCFG, image=other)
    assert result["image"] == other and f"Image: pinned to `{other}`." in body
