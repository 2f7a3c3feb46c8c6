"""Per-arm counts for canary analysis: from the collector's store, or from Prometheus (its HTTP query API).

From Prometheus, requests and errors come from Knative's queue-proxy, the sidecar in front of the
model in every revision pod: it counts each request it answers per revision with its status code,
so a request the model never answered (its container OOM-killed or crashed: 502, the revision's
timeout: 504, the queue full: 503) is an error of the arm whose revision it reached. The metric is
OpenTelemetry's ``http.server.request.duration`` from otelhttp, which wraps queue-proxy's whole
handler chain (knative/serving pkg/queue/sharedmain/handlers.go, ``mainHandler``), exported for
Prometheus as ``http_server_request_duration_seconds`` with label ``http_response_status_code``
(knative/pkg observability/metrics/prometheus_enabled.go: UnderscoreEscapingWithSuffixes).
That is Knative 1.21, which KServe 0.17 to 0.19 install; the same since 1.20. (The revision's name
is a resource attribute, exported only in ``target_info``: the PodMonitor's ``podTargetLabels``
put the pod's ``serving.knative.dev/revision`` label on every series instead.)

Which model version a revision serves is what its model says: the predictor's
``flywheel_requests_total{model_version}`` (created at 0 when the model loads) carries the same
revision label, and its last value over the window keeps the mapping while the model container is
down. Latency, fallbacks and feedback come from the model and the collector, labelled
``model_version``; each arm is queried by the version the manifest gives it (a revision cannot know
its traffic share). Counts are ``increase`` over the time since the canary started, which Git
knows: the commit that last changed the environment's InferenceService. Every query comes from
``arm_queries``, which the promtool tests (tests/servers/test_canary_prometheus.py) run on synthetic series
shaped as queue-proxy and the predictor export them. A Prometheus behind an authenticating proxy
takes a bearer token from ``$FLYWHEEL_PROMETHEUS_TOKEN``; it is sent as a header only, never
logged or written to a report.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import requests

from model.collect.arms import UNKNOWN
from model.collect.export import window_rows
from model.collect.store import open_store
from model.core.errors import FlywheelError
from model.core.git import run_git
from model.deploy.canary import ArmMetrics

# the model's counter, created at 0 when it loads: no series at all means its pods were never scraped
MODEL_REQUESTS = "flywheel_requests_total{%s}"
# what the model and the collector count, by model_version
COUNTS = {
    "fallbacks": "flywheel_fallbacks_total{%s}",
    "escalations": 'flywheel_feedback_total{%s, kind="escalated"}',
    "thumbs_up": 'flywheel_feedback_total{%s, kind="thumbs_up"}',
    "thumbs_down": 'flywheel_feedback_total{%s, kind="thumbs_down"}',
}
# queue-proxy (PodMonitor flywheel-queue-proxy; prometheus-operator names its job <namespace>/<name>)
QUEUE_PROXY_JOB = "flywheel-queue-proxy"
QUEUE_PROXY_REQUESTS = "http_server_request_duration_seconds_count"
ERROR_CODES = 'http_response_status_code=~"5.."'
# the pod label serving.knative.dev/revision as podTargetLabels names it (prometheus-operator
# pkg/prometheus/promcfg.go: sanitizeLabelName)
REVISION = "serving_knative_dev_revision"
P99 = "histogram_quantile(0.99, sum by (le) (increase(flywheel_request_duration_seconds_bucket{%s}[%ds])))"
# answers timed, and those within the budget: the slow ones are the difference
TIMED = "sum(increase(flywheel_request_duration_seconds_count{%s}[%ds]))"
WITHIN = 'sum(increase(flywheel_request_duration_seconds_bucket{%s, le="%s"}[%ds]))'
TOKEN_ENV = "FLYWHEEL_PROMETHEUS_TOKEN"
IN_FLIGHT = timedelta(minutes=1)  # far above any answer's latency: an older unanswered request failed


def canary_started(repo: Path, manifest: Path) -> float:
    """Unix time the change to ``manifest`` reached the checked-out branch: the committer time of the last
    first-parent commit that changed it. With a ``--no-ff`` merge that is the merge commit (the branch's
    own commit may be hours older), with a squash merge the squashed commit, with a fast-forward the commit."""
    done = run_git(repo, "log", "--first-parent", "-1", "--format=%ct", "--", str(manifest), check=False)
    if done.returncode != 0 or not done.stdout.strip():
        raise FlywheelError(
            f"{manifest}: cannot tell from Git when the canary started (needs full history: "
            f"fetch-depth 0): {done.stderr.strip()}"
        )
    return float(done.stdout.strip())


def redacted(url: str) -> str:
    """``url`` without any user:password part, as reports and errors name it."""
    parts = urlsplit(url)
    if not (parts.username or parts.password):
        return url
    return urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")))


def prometheus_session(token: str | None = None) -> requests.Session:
    """A session for Prometheus' query API: ``Authorization: Bearer <token>`` with a token (``token``, else
    ``$FLYWHEEL_PROMETHEUS_TOKEN``), nothing without one."""
    session = requests.Session()
    token = (os.environ.get(TOKEN_ENV, "") if token is None else token).strip()
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    return session


def arm_queries(namespace: str, version: int, seconds: int, le: str) -> dict[str, str]:
    """Every PromQL expression the analysis sends for one arm, by what it counts: the arm's model version
    in ``namespace`` over the last ``seconds`` (at least a minute); ``le`` is the latency budget's bucket."""
    # By version, not by an `arm` label: in a cluster both revisions run `flywheel serve --stable`
    # (a pod cannot know its traffic share); the manifest says which version is which arm.
    selector = f'namespace="{namespace}", model_version="{version}"'
    window = max(60, int(seconds))
    counted = {"model_requests": MODEL_REQUESTS, **COUNTS}
    queries = {name: f"sum(increase({template % selector}[{window}s]))" for name, template in counted.items()}
    # the revisions whose model reported this version at any time in the window (with the revision
    # label: one missing on both sides would match every revision's queue-proxy)
    labelled = f'{selector}, {REVISION}!=""'
    revisions = f"last_over_time({MODEL_REQUESTS % labelled}[{window}s])"
    served = f"and on (namespace, {REVISION}) {revisions}"
    proxy = f'namespace="{namespace}", job="{namespace}/{QUEUE_PROXY_JOB}"'
    queries["requests"] = f"sum(increase({QUEUE_PROXY_REQUESTS}{{{proxy}}}[{window}s]) {served})"
    queries["errors"] = f"sum(increase({QUEUE_PROXY_REQUESTS}{{{proxy}, {ERROR_CODES}}}[{window}s]) {served})"
    # 1 if queue-proxy of one of those revisions was scraped, 0 if it never answered a scrape
    queries["scraped"] = f"max(max_over_time(up{{{proxy}}}[{window}s]) {served})"
    queries["timed"] = TIMED % (selector, window)
    queries["within"] = WITHIN % (selector, le, window)
    queries["p99"] = P99 % (selector, window)
    return queries


def _queue_proxy_scraped(scraped: float | None, version: int, where: str) -> None:
    """Refuse to count from queue-proxy where Prometheus has none of its series for ``version``'s revision."""
    if scraped is None:
        raise FlywheelError(
            f"{where}: no queue-proxy target for the revision serving v{version}, so its errors cannot be "
            f"counted: apply PodMonitor {QUEUE_PROXY_JOB} (manifests/<env>/podmonitor.yaml; Prometheus "
            "selects it by the label release), with podTargetLabels serving.knative.dev/revision on it and "
            "on flywheel-intent"
        )
    if scraped == 0:
        raise FlywheelError(
            f"{where}: queue-proxy of the revision serving v{version} never answered a scrape on port "
            "http-usermetric (9091): Knative exports its request metrics only with request-metrics-protocol: "
            "prometheus in the ConfigMap config-observability (namespace knative-serving), on Knative 1.20 or newer"
        )


def _query(session: requests.Session, url: str, promql: str) -> float | None:
    """The query's single value; None when it has no series."""
    where = f"Prometheus at {redacted(url)}"
    try:
        resp = session.get(f"{url.rstrip('/')}/api/v1/query", params={"query": promql}, timeout=30)
    except requests.RequestException as exc:  # its text names host and path, never the headers
        raise FlywheelError(f"{where}: {exc}") from exc
    if resp.status_code in (401, 403):
        hint = "refuses the token in" if "Authorization" in session.headers else "wants a bearer token: set"
        raise FlywheelError(f"{where}: HTTP {resp.status_code}: it {hint} ${TOKEN_ENV}")
    try:
        payload = resp.json()
    except ValueError:
        raise FlywheelError(f"{where}: HTTP {resp.status_code}, not a Prometheus API answer") from None
    if resp.status_code != 200 or payload.get("status") != "success":
        raise FlywheelError(f"{where}: query {promql!r} failed: {payload.get('error', resp.status_code)}")
    result = payload["data"]["result"]
    if not result:
        return None
    value = float(result[0]["value"][1])
    return 0.0 if value != value else value  # NaN (no traffic in a histogram) counts as nothing


def prometheus_arm_metrics(
    url: str,
    namespace: str,
    versions: dict[str, int],
    seconds: int,
    slow_ms: float,
    session: requests.Session | None = None,
) -> dict[str, ArmMetrics]:
    """Counts per arm over the last ``seconds`` (at least a minute), for the model versions the manifest names.

    An arm whose model has no request series at all is ``no_data`` (its pods were never scraped, or
    no revision of it became ready), not zero traffic. An arm whose revision's queue-proxy was never
    scraped is an error naming what to set up (its errors would go uncounted). Another series
    missing means nothing happened (no request reached queue-proxy yet, no errors, no feedback).
    ``requests`` and ``errors`` (5xx) are queue-proxy's; the rest is the model's and the collector's.
    ``slow`` is answers over ``slow_ms``: timed answers minus the histogram bucket ``le`` =
    ``slow_ms``, which must be one of the predictor's bucket bounds (a missing bucket is an error, not zero).
    """
    session = session or prometheus_session()
    le = f"{slow_ms / 1000:g}"
    where = f"Prometheus at {redacted(url)}"
    arms = {}
    for arm, version in versions.items():
        queries = arm_queries(namespace, version, seconds, le)
        if _query(session, url, queries["model_requests"]) is None:
            arms[arm] = ArmMetrics(requests=0, model_version=version, no_data=True)
            continue
        _queue_proxy_scraped(_query(session, url, queries["scraped"]), version, where)
        asked = (name for name in queries if name not in ("model_requests", "scraped"))
        values = {name: _query(session, url, queries[name]) for name in asked}
        if values["within"] is None and (values["timed"] or 0) > 0:
            raise FlywheelError(f"{where}: no series for {queries['within']!r}")
        values = {name: value or 0.0 for name, value in values.items()}  # no requests reached it yet: 0
        counts = {name: round(values[name]) for name in ("requests", "errors", *COUNTS)}
        counts["slow"] = max(0, round(values["timed"] - values["within"]))
        for name in ("errors", "fallbacks", "escalations", "slow"):  # increase() extrapolates; keep counts consistent
            counts[name] = min(counts[name], counts["requests"])
        arms[arm] = ArmMetrics.from_dict(
            {**counts, "latency_p99_ms": values["p99"] * 1000, "model_version": version}, f"{where} [{arm}]"
        )
    return arms


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)  # SQLite returns naive UTC


def store_arm_metrics(
    store_url: str, versions: dict[str, int], since: datetime, until: datetime, slow_ms: float
) -> dict[str, ArmMetrics]:
    """Counts per arm from the collector's store, over calls logged in [since, until), and the calls no arm
    can be charged with under ``unknown``.

    Answered calls are attributed by the model version in their prediction (what the manifest says
    each arm runs). A call whose request was logged without a response failed (KServe logs a response
    only for HTTP 200), but nothing in its events says which revision it reached: ``ce-source`` is
    the same for every revision (``model.collect.arms``). So those calls are arm ``unknown``, with as
    many errors as requests; the analysis charges them to the canary before it promotes, never to
    either arm as a reason to roll back (``model.deploy.canary``). A request younger than
    ``IN_FLIGHT`` may still be answered, so it is not counted yet. ``slow`` counts answers whose
    logged latency exceeds ``slow_ms``.
    """
    engine = open_store(store_url)
    try:
        events, rows, _ = window_rows(engine, since, until)
    finally:
        engine.dispose()
    answered = {e["event_id"] for e in events if e["kind"] == "response"}
    settled = until - IN_FLIGHT
    unanswered = sum(
        1
        for e in events
        if e["kind"] == "request" and e["event_id"] not in answered and _aware(e["event_time"]) < settled
    )
    arms = {}
    for arm, version in versions.items():
        mine = [r for r in rows if r["model_version"] == str(version)]
        latencies = [r["latency_ms"] for r in mine]
        arms[arm] = ArmMetrics(
            requests=len(mine),
            fallbacks=sum(r["fallback"] for r in mine),
            escalations=sum(r["escalated"] for r in mine),
            thumbs_up=sum(r["thumbs"] == "up" for r in mine),
            thumbs_down=sum(r["thumbs"] == "down" for r in mine),
            slow=sum(1 for latency in latencies if latency > slow_ms),
            latency_p99_ms=float(np.percentile(latencies, 99)) if latencies else 0.0,
            model_version=version,
        )
    arms[UNKNOWN] = ArmMetrics(requests=unanswered, errors=unanswered)
    return arms


def seconds_since(started: float) -> int:
    """Whole seconds from the Unix time ``started`` to now: the window Prometheus counts over."""
    return int(time.time() - started)
