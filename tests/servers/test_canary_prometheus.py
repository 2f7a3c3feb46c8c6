"""Canary analysis from Prometheus: every PromQL expression it sends, built from the same templates
(``model.deploy.canary_metrics.arm_queries``), evaluated by ``promtool test rules`` on synthetic series
shaped as Knative's queue-proxy, the predictor and the collector export them and the PodMonitors label
them, with the values asserted; the counts the analysis makes of those answers (requests and errors
from queue-proxy, so failures the model never saw count); the bearer token; ``no_data``, its own outcome
when a version the manifest names has no series at all; and the errors naming a queue-proxy that is
not scraped or exports nothing."""

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
from model.deploy.args import CanaryAnalysisArgs
from model.deploy.canary import NO_DATA, ROLLBACK, ArmMetrics, analyse
from model.deploy.canary_metrics import TOKEN_ENV, arm_queries, prometheus_arm_metrics
from model.deploy.delivery import canary_analysis_step
from model.deploy.monitoring_checks import promtool
from model.deploy.steps import canary_analysis_command

NS = "flywheel-staging"
WINDOW = 600  # seconds: ten one-minute samples of every counter, evaluated at 20m
LE = "0.1"  # CanaryConfig's latency budget, 100 ms, as a bucket bound
STABLE, CANARY, METRICS_OFF, UNSCRAPED, CRASHED, ABSENT = 1, 2, 3, 4, 5, 9
# each version's Knative revision (KServe names them <isvc>-predictor-<generation>)
REVISION = {v: f"intent-predictor-0000{v}" for v in (STABLE, CANARY, METRICS_OFF, UNSCRAPED, CRASHED)}
# What each query must answer on the series below (None: no series at all)
EXPECTED = {
    CANARY: {
        "model_requests": 2000,  # what the model itself answered: 190 + 10 a minute
        "requests": 2500,  # what queue-proxy answered: 250 a minute
        "errors": 600,  # its 500s (the model's), 502s, 503s and 504s
        "scraped": 1,
        "fallbacks": 120,
        "escalations": 30,
        "thumbs_up": 70,  # summed over the feedback's arm label (it changes on promotion)
        "thumbs_down": 20,
        "timed": 2000,
        "within": 1800,
        "p99": 0.375,  # rank 1980 of 2000, half way into the (0.25, 0.5] bucket
    },
    STABLE: {
        "model_requests": 10100,
        "requests": 10100,  # two pods; 100 of them answered 400 (bad input: not an error)
        "errors": None,  # no failure yet: no series
        "scraped": 1,
        "fallbacks": 500,
        "escalations": None,
        "thumbs_up": None,
        "thumbs_down": None,
        "timed": 10000,
        "within": 9900,
        "p99": 0.1,
    },
}
NOTHING = dict.fromkeys(EXPECTED[CANARY])
EXPECTED |= {
    # Knative's config-observability left at request-metrics-protocol: none: port 9091 refuses every scrape
    METRICS_OFF: {**NOTHING, "model_requests": 1000, "scraped": 0},
    # no PodMonitor flywheel-queue-proxy (or no target of it for this revision)
    UNSCRAPED: {**NOTHING, "model_requests": 1000, "scraped": None},
    # the model was OOM-killed after loading: its series ended at 12m; every request since is queue-proxy's 502
    CRASHED: {**NOTHING, "model_requests": 0, "scraped": 1, "requests": 400, "errors": 400},
    ABSENT: NOTHING,  # a version nothing serves: no series for any query
}
OTELHTTP = {
    # the attributes otelhttp gives http.server.request.duration (opentelemetry-go-contrib
    # instrumentation/net/http/otelhttp v0.64.0, internal/semconv/server.go MetricAttributes), the
    # route tag queue-proxy adds (knative/serving pkg/queue/routetag_handler.go; kn:disabled without
    # tag-header routing), and the scope labels of OpenTelemetry's Prometheus exporter (exporters/
    # prometheus/exporter.go; otel_scope_schema_url is empty, so Prometheus drops it)
    "http_request_method": "POST",
    "kn_route_tag": "kn:disabled",
    "network_protocol_name": "http",
    "network_protocol_version": "1.1",
    "otel_scope_name": "go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp",
    "otel_scope_version": "0.64.0",
    "url_scheme": "http",
}


def _pod(revision: str, replica: str = "a") -> str:
    return f"{revision}-deployment-7d9c8f-{replica}2k4p"


def _series(name: str, values: str | int, namespace: str = NS, **labels) -> dict:
    """``values``: a count per minute from 0, or promtool's own notation."""
    text = ", ".join(f'{k}="{v}"' for k, v in {"namespace": namespace, **labels}.items())
    return {"series": f"{name}{{{text}}}", "values": values if isinstance(values, str) else f"0+{values}x30"}


def _target(job: str, revision: str, replica: str, namespace: str, **labels) -> dict:
    """The labels prometheus-operator gives a PodMonitor's target (pkg/prometheus/promcfg.go): container,
    pod, job <namespace>/<name>, endpoint for a port given by name; podTargetLabels' revision."""
    target = {"job": f"{namespace}/{job}", "pod": _pod(revision, replica), **labels}
    return {**target, "serving_knative_dev_revision": revision} if revision else target


def queue_proxy(revision: str, code: int, per_minute: int, replica: str = "a", namespace: str = NS) -> dict:
    """``per_minute`` requests answered ``code``, as queue-proxy exports them and PodMonitor
    flywheel-queue-proxy scrapes them."""
    labels = {
        **OTELHTTP,
        "http_response_status_code": str(code),
        "server_address": f"intent-predictor.{namespace}.svc.cluster.local",
        **_target("flywheel-queue-proxy", revision, replica, namespace, container="queue-proxy"),
        "endpoint": "http-usermetric",
        "instance": "10.0.0.7:9091",
    }
    return _series("http_server_request_duration_seconds_count", per_minute, namespace, **labels)


def queue_proxy_up(revision: str, value: int, replica: str = "a") -> dict:
    labels = _target("flywheel-queue-proxy", revision, replica, NS, container="queue-proxy", endpoint="http-usermetric")
    return _series("up", f"{value}x30", instance="10.0.0.7:9091", **labels)


def predictor(name: str, version: int, values: str | int, replica: str = "a", namespace: str = NS, **labels) -> dict:
    """The model container's series as PodMonitor flywheel-intent scrapes them (by port number: no endpoint label)."""
    target = _target("flywheel-intent", REVISION[version], replica, namespace, container="kserve-container")
    return _series(name, values, namespace, **target, instance="10.0.0.7:8080", model_version=str(version), **labels)


def feedback(kind: str, version: int, per_minute: int, arm: str) -> dict:
    """The collector's counter: arm and model version, no revision."""
    labels = {"job": f"{NS}/flywheel-collector", "pod": "flywheel-collector-1", "arm": arm, "kind": kind}
    return _series("flywheel_feedback_total", per_minute, model_version=str(version), **labels)


def input_series() -> list[dict]:
    out = [
        # canary v2, one pod: the model answers 190 a minute and fails 10 itself (500); queue-proxy
        # answers 40 more that never reached an answer: 502 (the container restarting after an OOM
        # kill), 503 (queue full), 504 (the revision's timeout)
        *(
            queue_proxy(REVISION[CANARY], code, n)
            for code, n in ((200, 190), (500, 10), (502, 30), (503, 10), (504, 10))
        ),
        queue_proxy_up(REVISION[CANARY], 1),
        predictor("flywheel_requests_total", CANARY, 190, code="200"),
        predictor("flywheel_requests_total", CANARY, 10, code="500"),
        predictor("flywheel_fallbacks_total", CANARY, 12),
        predictor("flywheel_request_duration_seconds_count", CANARY, 200),
        feedback("escalated", CANARY, 3, "canary"),
        feedback("thumbs_up", CANARY, 6, "canary"),
        feedback("thumbs_up", CANARY, 1, "stable"),
        feedback("thumbs_down", CANARY, 2, "canary"),
        # stable v1, two pods; bad input answered 400 by the model, through queue-proxy
        queue_proxy(REVISION[STABLE], 200, 600),
        queue_proxy(REVISION[STABLE], 400, 10),
        queue_proxy(REVISION[STABLE], 200, 400, replica="b"),
        queue_proxy_up(REVISION[STABLE], 1),
        queue_proxy_up(REVISION[STABLE], 1, replica="b"),
        predictor("flywheel_requests_total", STABLE, 600, code="200"),
        predictor("flywheel_requests_total", STABLE, 10, code="400"),
        predictor("flywheel_requests_total", STABLE, 400, replica="b", code="200"),
        predictor("flywheel_fallbacks_total", STABLE, 50),
        predictor("flywheel_request_duration_seconds_count", STABLE, 1000),
        # v3: queue-proxy's metrics port refuses scrapes; v4: queue-proxy not scraped at all
        queue_proxy_up(REVISION[METRICS_OFF], 0),
        predictor("flywheel_requests_total", METRICS_OFF, 100, code="200"),
        predictor("flywheel_requests_total", UNSCRAPED, 100, code="200"),
        # v5: the model loaded (its counter created at 0), then was OOM-killed at 12m: its series went
        # stale, and queue-proxy answers 502 to every request its revision gets
        predictor("flywheel_requests_total", CRASHED, "0x12 stale", code="200"),
        queue_proxy(REVISION[CRASHED], 502, 40),
        queue_proxy_up(REVISION[CRASHED], 1),
        # never counted: the same revision name and version in the other environment, a revision no
        # model in the window reported (an old one draining), a series without the revision label
        queue_proxy(REVISION[CANARY], 502, 999, namespace="flywheel-production"),
        predictor("flywheel_requests_total", CANARY, 999, namespace="flywheel-production", code="200"),
        queue_proxy("intent-predictor-00000", 502, 999),
        queue_proxy("", 502, 999),
        # a predictor of v2 scraped without the revision label (a scrape config without podTargetLabels)
        _series("flywheel_requests_total", "0x30", job=f"{NS}/other", pod="p", model_version=str(CANARY), code="200"),
    ]
    # some of the predictor's bucket bounds (model.serve.metrics.LATENCY_BUCKETS), 0.15 beside the budget's 0.1
    buckets = (("0.05", 60, 500), (LE, 180, 990), ("0.15", 186, 995), ("0.25", 196, 1000), ("0.5", 200, 1000))
    for le, canary, stable in buckets + (("+Inf", 200, 1000),):
        out += [
            predictor("flywheel_request_duration_seconds_bucket", CANARY, canary, le=le),
            predictor("flywheel_request_duration_seconds_bucket", STABLE, stable, le=le),
        ]
    return out


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
    # requests and errors are queue-proxy's: 500 more requests than the model answered, 600 errors where it saw 100
    assert arms["canary"] == ArmMetrics(2500, 600, 120, 30, 70, 20, slow=200, latency_p99_ms=375.0, model_version=2)
    assert arms["stable"] == ArmMetrics(10100, 0, 500, 0, 0, 0, slow=100, latency_p99_ms=100.0, model_version=1)
    assert {auth for _, auth in seen} == {None}  # no token, no header


def test_a_canary_whose_model_crashed_is_rolled_back_on_queue_proxys_502s(monkeypatch):
    """The model's own counters saw no request at all; queue-proxy answered 400 with 502."""
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with prometheus() as (url, _):
        arms = prometheus_arm_metrics(url, NS, {"stable": STABLE, "canary": CRASHED}, WINDOW, slow_ms=100)
    assert arms["canary"] == ArmMetrics(400, 400, model_version=CRASHED)
    verdict = analyse(arms["stable"], arms["canary"], CanaryConfig())
    assert verdict.decision == ROLLBACK and "error rate is higher on the canary: 100.00%" in verdict.reasons[0]


@pytest.mark.parametrize(
    ("version", "message"),
    [
        (METRICS_OFF, "request-metrics-protocol: prometheus in the ConfigMap config-observability"),
        (UNSCRAPED, "no queue-proxy target for the revision serving v4, so its errors cannot be counted"),
    ],
)
def test_a_queue_proxy_that_reports_nothing_is_an_error_naming_the_fix(monkeypatch, version, message):
    """Counting the model's errors alone would hide the ones outside it: no figure, but what to set up."""
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with prometheus() as (url, _), pytest.raises(FlywheelError) as err:
        prometheus_arm_metrics(url, NS, {"stable": STABLE, "canary": version}, WINDOW, slow_ms=100)
    assert message in str(err.value)


def test_a_version_without_any_series_is_no_data_not_zero_traffic(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with prometheus() as (url, seen):
        arms = prometheus_arm_metrics(url, NS, {"stable": STABLE, "canary": ABSENT}, WINDOW, slow_ms=100)
    assert arms["canary"] == ArmMetrics(0, model_version=ABSENT, no_data=True) and not arms["stable"].no_data
    asked = [q for q, _ in seen if f'model_version="{ABSENT}"' in q]
    assert asked == [arm_queries(NS, ABSENT, WINDOW, LE)["model_requests"]]
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
    monkeypatch.setitem(EXPECTED, CANARY, NOTHING)  # canary v2: nothing scraped
    with prometheus(window=60) as (url, _):  # the canary started seconds ago: the one-minute floor
        result, md = canary_analysis_step(
            "staging", canary_repo, cfg=CanaryConfig(), dcfg=DeliveryConfig(), prometheus_url=url
        )
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
