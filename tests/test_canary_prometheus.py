"""Canary analysis from Prometheus: every PromQL expression it sends, built from the same templates
(``model.deploy.canary_metrics.arm_queries``), evaluated by ``promtool test rules`` on synthetic series
with the values asserted; the counts the analysis makes of those answers; the bearer token; and
``no_data``, its own outcome when a version the manifest names has no series at all."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from model.core.config import PROJECT_ROOT, CanaryConfig, DeliveryConfig
from model.core.errors import FlywheelError
from model.deploy import manifests
from model.deploy.canary import NO_DATA, ArmMetrics, analyse
from model.deploy.canary_metrics import TOKEN_ENV, arm_queries, prometheus_arm_metrics
from model.deploy.delivery import canary_analysis_step
from model.deploy.monitoring_checks import promtool
from model.deploy.steps import CanaryAnalysisArgs, canary_analysis_command

NS = "flywheel-staging"
WINDOW = 600  # seconds: ten one-minute samples of every counter, evaluated at 20m
LE = "0.1"  # CanaryConfig's latency budget, 100 ms, as a bucket bound
CANARY, STABLE, ABSENT = 2, 1, 9
# What each query must answer on the series below (None: no series at all)
EXPECTED = {
    CANARY: {
        "requests": 3000,  # 270 + 30 a minute
        "errors": 300,  # the 503s
        "fallbacks": 120,
        "escalations": 30,
        "thumbs_up": 70,  # summed over the feedback's arm label (it changes on promotion)
        "thumbs_down": 20,
        "timed": 3000,
        "within": 2700,
        "p99": 0.375,  # rank 2970 of 3000, half way into the (0.25, 0.5] bucket
    },
    STABLE: {
        "requests": 10000,
        "errors": None,  # no failure yet: no series
        "fallbacks": 500,
        "escalations": None,
        "thumbs_up": None,
        "thumbs_down": None,
        "timed": 10000,
        "within": 9900,
        "p99": 0.1,
    },
}
EXPECTED[ABSENT] = dict.fromkeys(EXPECTED[CANARY])  # a version nothing serves: no series for any query


def _series(name: str, per_minute: int, namespace: str = NS, **labels) -> dict:
    text = ", ".join(f'{k}="{v}"' for k, v in {"namespace": namespace, "pod": "p", **labels}.items())
    return {"series": f"{name}{{{text}}}", "values": f"0+{per_minute}x30"}


def input_series() -> list[dict]:
    """The predictor's series (model_version only) and the collector's feedback (arm and model_version)."""
    c, s = {"model_version": str(CANARY)}, {"model_version": str(STABLE)}
    out = [
        _series("flywheel_requests_total", 270, code="200", **c),
        _series("flywheel_requests_total", 30, code="503", **c),
        _series("flywheel_fallbacks_total", 12, **c),
        _series("flywheel_feedback_total", 3, kind="escalated", arm="canary", **c),
        _series("flywheel_feedback_total", 6, kind="thumbs_up", arm="canary", **c),
        _series("flywheel_feedback_total", 1, kind="thumbs_up", arm="stable", **c),
        _series("flywheel_feedback_total", 2, kind="thumbs_down", arm="canary", **c),
        _series("flywheel_request_duration_seconds_count", 300, **c),
        _series("flywheel_requests_total", 1000, code="200", **s),
        _series("flywheel_fallbacks_total", 50, **s),
        _series("flywheel_request_duration_seconds_count", 1000, **s),
        # the same version in the other environment: never counted here
        _series("flywheel_requests_total", 999, namespace="flywheel-production", code="200", **c),
    ]
    # some of the predictor's bucket bounds (model.serve.metrics.LATENCY_BUCKETS), 0.15 beside the budget's 0.1
    buckets = (("0.05", 100, 500), (LE, 270, 990), ("0.15", 280, 995), ("0.25", 294, 1000), ("0.5", 300, 1000))
    for le, canary, stable in buckets:
        out += [
            _series("flywheel_request_duration_seconds_bucket", canary, le=le, **c),
            _series("flywheel_request_duration_seconds_bucket", stable, le=le, **s),
        ]
    return out + [
        _series("flywheel_request_duration_seconds_bucket", per_minute, le="+Inf", model_version=str(v))
        for v, per_minute in ((CANARY, 300), (STABLE, 1000))
    ]


def _expr_test(query: str, value) -> dict:
    samples = [] if value is None else [{"labels": "{}", "value": value}]
    return {"expr": query, "eval_time": "20m", "exp_samples": samples}


@pytest.mark.real("promtool")
def test_every_query_the_analysis_sends_answers_as_expected_on_synthetic_series(tmp_path):
    checks = []
    for version, expected in EXPECTED.items():
        queries = arm_queries(NS, version, WINDOW, LE)
        assert set(queries) == set(expected), "a query without an expected value here is untested"
        checks += [_expr_test(queries[name], value) for name, value in expected.items()]
    # a latency budget that is no bucket bound has no series, though answers were timed (an error, not zero)
    checks.append(_expr_test(arm_queries(NS, CANARY, WINDOW, "0.09")["within"], None))
    tests = {"tests": [{"interval": "1m", "input_series": input_series(), "promql_expr_test": checks}]}
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    done = subprocess.run(
        [promtool(), "test", "rules", "test.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr


class ByQuery(BaseHTTPRequestHandler):
    """Answers /api/v1/query from a table of exact query text -> value (missing: no series), as Prometheus
    does; an unknown query is a test failure. Records each request's Authorization header."""

    answers: dict
    seen: list
    status: int = 200

    def log_message(self, *args):
        pass

    def do_GET(self):
        query = parse_qs(urlparse(self.path).query)["query"][0]
        self.seen.append((query, self.headers.get("Authorization")))
        if self.status != 200:
            body, code = b"Unauthorized", self.status
        elif query not in self.answers:
            body, code = json.dumps({"status": "error", "error": f"unexpected query {query}"}).encode(), 400
        else:
            value = self.answers[query]
            result = [] if value is None else [{"metric": {}, "value": [1700000000, str(value)]}]
            body, code = (
                json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}}).encode(),
                200,
            )
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextmanager
def prometheus(status: int = 200, window: int = WINDOW) -> Iterator[tuple[str, list]]:
    """A stand-in answering every query of ``arm_queries`` with EXPECTED (what promtool confirmed above)."""
    answers = {
        arm_queries(NS, version, window, LE)[name]: value
        for version, expected in EXPECTED.items()
        for name, value in expected.items()
    }
    seen: list = []
    handler = type("Handler", (ByQuery,), {"answers": answers, "seen": seen, "status": status})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_the_counts_are_made_from_those_answers(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with prometheus() as (url, seen):
        arms = prometheus_arm_metrics(url, NS, {"stable": STABLE, "canary": CANARY}, WINDOW, slow_ms=100)
    assert arms["canary"] == ArmMetrics(3000, 300, 120, 30, 70, 20, slow=300, latency_p99_ms=375.0, model_version=2)
    assert arms["stable"] == ArmMetrics(10000, 0, 500, 0, 0, 0, slow=100, latency_p99_ms=100.0, model_version=1)
    assert {auth for _, auth in seen} == {None}  # no token, no header


def test_a_version_without_any_series_is_no_data_not_zero_traffic(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with prometheus() as (url, seen):
        arms = prometheus_arm_metrics(url, NS, {"stable": STABLE, "canary": ABSENT}, WINDOW, slow_ms=100)
    assert arms["canary"] == ArmMetrics(0, model_version=ABSENT, no_data=True) and not arms["stable"].no_data
    assert [q for q, _ in seen if f'model_version="{ABSENT}"' in q] == [arm_queries(NS, ABSENT, WINDOW, LE)["requests"]]
    verdict = analyse(arms["stable"], arms["canary"], CanaryConfig())
    assert verdict.decision == NO_DATA and "no data for canary (v9)" in verdict.reasons[0]
    # with enough traffic on both arms it is not no_data: the arm being absent is what decides
    assert analyse(arms["stable"], arms["stable"], CanaryConfig()).decision != NO_DATA


def test_the_bearer_token_is_sent_and_never_reported(monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "s3cr3t-token")
    with prometheus() as (url, seen):
        prometheus_arm_metrics(url, NS, {"canary": CANARY}, WINDOW, slow_ms=100)
    assert seen and {auth for _, auth in seen} == {"Bearer s3cr3t-token"}
    with prometheus(status=401) as (url, _), pytest.raises(FlywheelError) as err:
        prometheus_arm_metrics(url, NS, {"canary": CANARY}, WINDOW, slow_ms=100)
    assert f"refuses the token in ${TOKEN_ENV}" in str(err.value) and "s3cr3t" not in str(err.value)
    monkeypatch.delenv(TOKEN_ENV)
    with (
        prometheus(status=401) as (url, _),
        pytest.raises(FlywheelError, match=f"wants a bearer token: set \\${TOKEN_ENV}"),
    ):
        prometheus_arm_metrics(url, NS, {"canary": CANARY}, WINDOW, slow_ms=100)


@pytest.fixture
def canary_repo(tmp_path, monkeypatch) -> Path:
    """A Git repository of this project's manifests with staging running canary v2 beside stable v1."""
    for var in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"):
        monkeypatch.setenv(var, "Flywheel Test")
    for var in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
        monkeypatch.setenv(var, "test@example.invalid")
    root = tmp_path / "gitops"
    (root / "manifests").mkdir(parents=True)
    for env in manifests.ENVIRONMENTS:
        path = root / "manifests" / env / manifests.ISVC_FILE
        path.parent.mkdir()
        path.write_text((PROJECT_ROOT / "manifests" / env / manifests.ISVC_FILE).read_text())
    path = root / "manifests" / "staging" / manifests.ISVC_FILE
    v1, v2 = (manifests.ModelRef(v, f"s3://models/flywheel-intent/{v}/artifact", str(v) * 64) for v in (1, 2))
    for ref in (v1, v2):
        rollout = manifests.start_canary(manifests.read_rollout(path), ref, 10, path)
        path.write_text(manifests.write_rollout(path, manifests.load(path), rollout))
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "canary v2"]):
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)
    return root


def test_canary_analysis_says_no_data_and_exits_1(canary_repo, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "s3cr3t-token")
    monkeypatch.setitem(EXPECTED, CANARY, EXPECTED[ABSENT])  # canary v2: nothing scraped
    with prometheus(window=60) as (url, _):  # the canary started seconds ago: the one-minute floor
        result, md = canary_analysis_step("staging", None, url, canary_repo, CanaryConfig(), DeliveryConfig())
        exit_code = canary_analysis_command(
            CanaryAnalysisArgs(env="staging", prometheus_url=url, repo=str(canary_repo)),
            canary=CanaryConfig(),
            delivery=DeliveryConfig(),
        ).exit_code
    assert result["decision"] == NO_DATA and result["arms"]["canary"]["no_data"] is True
    assert "no data for canary (v2)" in md and "NO_DATA" in md
    assert exit_code == 1  # unlike hold: the workflow's run fails, someone looks at the scraping
    assert f"bearer token from ${TOKEN_ENV}" in result["metrics_source"]
    assert "s3cr3t" not in json.dumps(result) + md
