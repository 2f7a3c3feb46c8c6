"""Per-arm counts for canary analysis: from the collector's store, or from Prometheus (its HTTP query API).

The metric names are the ones the alert rules and the dashboard use (README, "Monitoring"): the
predictor exports requests, latency and fallbacks labelled ``arm`` and ``model_version``; the
collector exports feedback labelled the same way. Counts are ``increase`` over the time since the
canary started, which Git knows: the commit that last changed the environment's InferenceService.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import requests

from model.collect.export import ARM_OF_ENDPOINT, window_rows
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
IN_FLIGHT = timedelta(minutes=1)  # far above any answer's latency: an older unanswered request failed


def canary_started(repo: Path, manifest: Path) -> float:
    """Unix time of the last commit that changed ``manifest`` (the merge that started the canary)."""
    done = run_git(repo, "log", "-1", "--format=%ct", "--", str(manifest), check=False)
    if done.returncode != 0 or not done.stdout.strip():
        raise FlywheelError(
            f"{manifest}: cannot tell from Git when the canary started (needs full history: "
            f"fetch-depth 0): {done.stderr.strip()}"
        )
    return float(done.stdout.strip())


def _query(session: requests.Session, url: str, promql: str, required: bool = False) -> float:
    """The query's single value; no series means nothing happened, or with ``required`` an error."""
    try:
        resp = session.get(f"{url.rstrip('/')}/api/v1/query", params={"query": promql}, timeout=30)
        payload = resp.json()
    except (requests.RequestException, ValueError) as exc:
        raise FlywheelError(f"Prometheus at {url}: {exc}") from exc
    if resp.status_code != 200 or payload.get("status") != "success":
        raise FlywheelError(f"Prometheus at {url}: query {promql!r} failed: {payload.get('error', resp.status_code)}")
    result = payload["data"]["result"]
    if not result and required:
        raise FlywheelError(f"Prometheus at {url}: no series for {promql!r}")
    if not result:
        return 0.0  # no series yet: nothing happened on that arm
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

    ``slow`` is answers over ``slow_ms``: timed answers minus the histogram bucket ``le`` = ``slow_ms``,
    which must be one of the predictor's bucket bounds (a missing bucket is an error, not zero).
    """
    session = session or requests.Session()
    window = max(60, int(seconds))
    le = f"{slow_ms / 1000:g}"
    arms = {}
    for arm, version in versions.items():
        # By version, not by the `arm` label: in a cluster both revisions run `flywheel serve --stable`
        # (a pod cannot know its traffic share); the manifest says which version is which arm.
        selector = f'namespace="{namespace}", model_version="{version}"'
        counts = {
            name: round(_query(session, url, f"sum(increase({template % selector}[{window}s]))"))
            for name, template in COUNTS.items()
        }
        timed = _query(session, url, TIMED % (selector, window))
        within = _query(session, url, WITHIN % (selector, le, window), required=timed > 0)
        counts["slow"] = max(0, round(timed - within))
        for name in ("errors", "fallbacks", "escalations", "slow"):  # increase() extrapolates; keep counts consistent
            counts[name] = min(counts[name], counts["requests"])
        p99 = _query(session, url, P99 % (selector, window)) * 1000
        arms[arm] = ArmMetrics.from_dict(
            {**counts, "latency_p99_ms": p99, "model_version": version}, f"Prometheus at {url} [{arm}]"
        )
    return arms


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)  # SQLite returns naive UTC


def store_arm_metrics(
    store_url: str, versions: dict[str, int], since: datetime, until: datetime, slow_ms: float
) -> dict[str, ArmMetrics]:
    """Counts per arm from the collector's store, over calls logged in [since, until).

    Answered calls are attributed by the model version in their prediction (what the manifest says
    each arm runs). Errors are calls whose request was logged without a response, attributed by the
    logger's endpoint (``default`` = stable, ``canary``): KServe logs a response only for HTTP 200.
    A request younger than ``IN_FLIGHT`` may still be answered, so it is not counted yet. ``slow``
    counts answers whose logged latency exceeds ``slow_ms``.
    """
    engine = open_store(store_url)
    try:
        events, rows, _ = window_rows(engine, since, until)
    finally:
        engine.dispose()
    answered = {e["event_id"] for e in events if e["kind"] == "response"}
    settled = until - IN_FLIGHT
    unanswered = [
        e
        for e in events
        if e["kind"] == "request" and e["event_id"] not in answered and _aware(e["event_time"]) < settled
    ]
    arms = {}
    for arm, version in versions.items():
        mine = [r for r in rows if r["model_version"] == str(version)]
        errors = sum(1 for e in unanswered if ARM_OF_ENDPOINT.get(e["endpoint"]) == arm)
        latencies = [r["latency_ms"] for r in mine]
        arms[arm] = ArmMetrics(
            requests=len(mine) + errors,
            errors=errors,
            fallbacks=sum(r["fallback"] for r in mine),
            escalations=sum(r["escalated"] for r in mine),
            thumbs_up=sum(r["thumbs"] == "up" for r in mine),
            thumbs_down=sum(r["thumbs"] == "down" for r in mine),
            slow=sum(1 for latency in latencies if latency > slow_ms),
            latency_p99_ms=float(np.percentile(latencies, 99)) if latencies else 0.0,
            model_version=version,
        )
    return arms


def seconds_since(started: float) -> int:
    """Whole seconds from the Unix time ``started`` to now: the window Prometheus counts over."""
    return int(time.time() - started)
