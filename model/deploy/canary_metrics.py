"""Per-arm counts for canary analysis: from the collector's store, or from Prometheus (its HTTP query API).

The metric names are the ones the alert rules and the dashboard use (README, "Monitoring"): the
predictor exports requests, latency and fallbacks labelled ``model_version`` (no ``arm``: a revision
cannot know its traffic share); the collector exports feedback labelled ``model_version`` too. Each
arm is queried by the version the manifest gives it. Counts are ``increase`` over the time since the
canary started, which Git knows: the commit that last changed the environment's InferenceService.
Every query comes from ``arm_queries``, which the promtool tests (tests/test_canary_prometheus.py)
run on synthetic series. A Prometheus behind an authenticating proxy takes a bearer token from
``$FLYWHEEL_PROMETHEUS_TOKEN``; it is sent as a header only, never logged or written to a report.
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

COUNTS = {
    "requests": "flywheel_requests_total{%s}",
    "errors": 'flywheel_requests_total{%s, code=~"5.."}',
    "fallbacks": "flywheel_fallbacks_total{%s}",
    "escalations": 'flywheel_feedback_total{%s, kind="escalated"}',
    "thumbs_up": 'flywheel_feedback_total{%s, kind="thumbs_up"}',
    "thumbs_down": 'flywheel_feedback_total{%s, kind="thumbs_down"}',
}
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
    queries = {name: f"sum(increase({template % selector}[{window}s]))" for name, template in COUNTS.items()}
    queries["timed"] = TIMED % (selector, window)
    queries["within"] = WITHIN % (selector, le, window)
    queries["p99"] = P99 % (selector, window)
    return queries


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

    An arm with no request series at all is ``no_data`` (nothing scraped, or the revision never
    served), not zero traffic. Another series missing means nothing happened (no errors yet, no
    feedback). ``slow`` is answers over ``slow_ms``: timed answers minus the histogram bucket ``le`` =
    ``slow_ms``, which must be one of the predictor's bucket bounds (a missing bucket is an error, not zero).
    """
    session = session or prometheus_session()
    le = f"{slow_ms / 1000:g}"
    where = f"Prometheus at {redacted(url)}"
    arms = {}
    for arm, version in versions.items():
        queries = arm_queries(namespace, version, seconds, le)
        values = {"requests": _query(session, url, queries["requests"])}
        if values["requests"] is None:
            arms[arm] = ArmMetrics(requests=0, model_version=version, no_data=True)
            continue
        values |= {name: _query(session, url, q) for name, q in queries.items() if name != "requests"}
        if values["within"] is None and (values["timed"] or 0) > 0:
            raise FlywheelError(f"{where}: no series for {queries['within']!r}")
        values = {name: value or 0.0 for name, value in values.items()}
        counts = {name: round(values[name]) for name in COUNTS}
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
