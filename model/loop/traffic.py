"""Simulated users: labelled utterances sent through the running predictor, reactions sent to the collector.

Each example is one user message. The user calls ``flywheel serve`` as a chat front end would (V1
``POST /v1/models/NAME:predict``, a ``ce-id`` header so the call is logged under an id the user
knows, and ``X-Conversation-Id``), reads the answer, and reacts from the ground truth by posting an
``org.flywheel.feedback`` CloudEvent to ``flywheel collect``:

- a right answer (not handed off, the true intent) is rated up or marked resolved, or left alone;
- a wrong answer is rated down, escalated or abandoned, or left alone;
- a hand-off to a human (fallback) is escalated (the user took the human) or abandoned, or left alone.

Probabilities are ``TrafficConfig``'s. A request goes to the canary (``NAME-canary``) with
probability ``canary_percent``/100, independently per request, as KServe's ingress splits traffic
between revisions by weight; or, given ``route``, to the arm that ``route`` names for the request's
uniform draw (the local loop passes its cluster stand-in's Knative route: ``LocalCluster.arm_for``).
Routing and reaction are drawn from a generator seeded by
``(seed, seed_offset, row number)``, so they depend neither on thread timing nor on the other rows.

Calls run in a bounded thread pool, one ``requests.Session`` per thread. A failed call becomes a row
with its status and error, never an exception; the run stops with ``FlywheelError`` when either
server is not ready at the start, or once more than ``MAX_FAILED_SHARE`` of the requests failed
(a failed request: no 200 with a readable prediction, or feedback the collector did not acknowledge).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import requests
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

from model.core.config import TrafficConfig
from model.core.errors import FlywheelError

STABLE, CANARY = "stable", "canary"
FEEDBACK_TYPE = "org.flywheel.feedback"  # the collector's feedback event type (model/collect/collector.py)
FEEDBACK_SOURCE = "flywheel-traffic-simulator"
MAX_FAILED_SHARE = 0.05
COLUMNS = [
    "time",
    "phase",
    "request_id",
    "conversation_id",
    "text",
    "true_intent",
    "predicted_intent",
    "confidence",
    "fallback",
    "correct",
    "model_version",
    "arm",
    "feedback",
    "latency_ms",
    "status",
    "error",
]


def case_of(predicted_intent: str, fallback: bool, true_intent: str) -> str:
    """Which kind of answer the user got: "fallback" (handed off), "right" or "wrong"."""
    if fallback:
        return "fallback"
    return "right" if predicted_intent == true_intent else "wrong"


def is_correct(predicted_intent: str, fallback: bool, true_intent: str, oos_label: str) -> bool:
    """Answered with the true intent, or handed off a message that is out of scope."""
    return (not fallback and predicted_intent == true_intent) or (fallback and true_intent == oos_label)


def react(case: str, draw: float, cfg: TrafficConfig) -> str:
    """The feedback kind for a uniform draw in [0, 1): consecutive slices of width p per reaction, else ""."""
    edge = 0.0
    for kind, name in TrafficConfig.REACTIONS[case]:
        edge += getattr(cfg, name)
        if draw < edge:
            return kind
    return ""


@dataclass(frozen=True)
class _Message:
    index: int
    text: str
    true_intent: str
    arm: str
    reaction_draw: float


def by_percent(canary_percent: int) -> Callable[[float], str]:
    """The canary for a draw below ``canary_percent``/100, else stable (the canary's share comes first)."""
    return lambda draw: CANARY if draw < canary_percent / 100 else STABLE


def plan_messages(
    examples: pd.DataFrame, route: Callable[[float], str], cfg: TrafficConfig, seed_offset: int
) -> list[_Message]:
    """Arm and reaction draw of every message, from its own generator: the same whatever the thread timing."""
    messages = []
    for i, (text, intent) in enumerate(zip(examples["text"], examples["intent"])):
        route_draw, reaction_draw = np.random.default_rng([cfg.seed, seed_offset, i]).random(2)
        arm = route(float(route_draw))
        if arm not in (STABLE, CANARY):
            raise FlywheelError(f"the route sent message {i} to arm {arm!r}; the predictor hosts {STABLE} and {CANARY}")
        messages.append(_Message(i, str(text), str(intent), arm, float(reaction_draw)))
    return messages


def _get(session: requests.Session, url: str, timeout: float, what: str) -> None:
    try:
        answer = session.get(url, timeout=timeout)
    except requests.RequestException as exc:
        raise FlywheelError(f"{what} is unreachable at {url}: {type(exc).__name__}: {exc}") from exc
    if answer.status_code != 200:
        raise FlywheelError(f"{what} is not ready: {url} answered {answer.status_code} {answer.text[:200]!r}")


def check_ready(predictor_url: str, collector_url: str, endpoints: list[str], timeout_s: float) -> None:
    """Both servers up and every model that will be called loaded, else FlywheelError naming the URL."""
    with requests.Session() as session:
        _get(session, f"{predictor_url}/v2/health/ready", timeout_s, "the predictor (flywheel serve)")
        for name in endpoints:
            _get(session, f"{predictor_url}/v2/models/{name}/ready", timeout_s, f"model {name!r} on the predictor")
        _get(session, f"{collector_url}/healthz", timeout_s, "the collector (flywheel collect)")


class _Users:
    """What each simulated user does with one message; one HTTP session per thread."""

    def __init__(
        self, predictor_url: str, collector_url: str, endpoint: str, cfg: TrafficConfig, phase: str, oos_label: str
    ):
        self.predictor_url, self.collector_url = predictor_url, collector_url
        self.endpoint, self.cfg, self.phase, self.oos_label = endpoint, cfg, phase, oos_label
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            with self._lock:
                self._sessions.append(session)
        return session

    def close(self) -> None:
        with self._lock:
            for session in self._sessions:
                session.close()

    def send(self, message: _Message) -> dict:
        session = self._session()
        name = f"{self.endpoint}-canary" if message.arm == CANARY else self.endpoint
        row = {
            "phase": self.phase,
            "request_id": str(uuid.uuid4()),  # random, not seeded: a rerun must not collide with stored ids
            "conversation_id": str(uuid.uuid4()),
            "text": message.text,
            "true_intent": message.true_intent,
            "predicted_intent": "",
            "confidence": float("nan"),
            "fallback": pd.NA,
            "correct": pd.NA,
            "model_version": "",
            "arm": message.arm,
            "feedback": "",
            "latency_ms": float("nan"),
            "status": 0,
            "error": "",
        }
        started = time.perf_counter()
        try:
            answer = session.post(
                f"{self.predictor_url}/v1/models/{name}:predict",
                json={"instances": [message.text]},
                headers={"ce-id": row["request_id"], "x-conversation-id": row["conversation_id"]},
                timeout=self.cfg.timeout_s,
            )
        except requests.RequestException as exc:
            return {**row, "time": datetime.now(UTC), "error": f"predictor: {type(exc).__name__}: {exc}"}
        row["time"] = datetime.now(UTC)
        row["latency_ms"] = (time.perf_counter() - started) * 1000
        row["status"] = answer.status_code
        if answer.status_code != 200:
            return {**row, "error": f"predictor answered {answer.status_code}: {answer.text[:200]}"}
        try:
            prediction = answer.json()["predictions"][0]
            intent, fallback = prediction["intent"], prediction["fallback"]
            confidence, version = float(prediction["confidence"]), str(prediction["model_version"])
            if not isinstance(intent, str) or not isinstance(fallback, bool):
                raise TypeError(f"intent {intent!r} / fallback {fallback!r}")
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            return {**row, "error": f"predictor answer unreadable: {type(exc).__name__}: {exc}"}
        row.update(
            request_id=str(prediction.get("request_id") or row["request_id"]),
            predicted_intent=intent,
            confidence=confidence,
            fallback=fallback,
            correct=is_correct(intent, fallback, message.true_intent, self.oos_label),
            model_version=version,
        )
        kind = react(case_of(intent, fallback, message.true_intent), message.reaction_draw, self.cfg)
        if kind:
            error = self._feedback(session, kind, row["request_id"], row["conversation_id"])
            if error:
                row["error"] = error  # not acknowledged, so not stored: not reported as given either
            else:
                row["feedback"] = kind
        return row

    def _feedback(self, session: requests.Session, kind: str, request_id: str, conversation_id: str) -> str:
        """Post one feedback event; "" once the collector acknowledged it (stored), else what went wrong."""
        attributes = {
            "type": FEEDBACK_TYPE,
            "source": FEEDBACK_SOURCE,
            "id": str(uuid.uuid4()),
            "time": datetime.now(UTC).isoformat(),
        }
        payload = {"kind": kind, "request_id": request_id, "conversation_id": conversation_id}
        headers, body = to_binary(CloudEvent(attributes, json.dumps(payload).encode()), data_marshaller=lambda d: d)
        headers["content-type"] = "application/json"
        try:
            answer = session.post(self.collector_url, data=body, headers=headers, timeout=self.cfg.timeout_s)
        except requests.RequestException as exc:
            return f"feedback {kind}: collector: {type(exc).__name__}: {exc}"
        if not 200 <= answer.status_code < 300:
            return f"feedback {kind}: collector answered {answer.status_code}: {answer.text[:200]}"
        return ""


def _frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["time"] = pd.to_datetime(frame["time"], utc=True)
    for column in ("fallback", "correct"):  # missing (NA) where the request failed: no prediction
        frame[column] = frame[column].astype("boolean")
    frame["confidence"] = frame["confidence"].astype(float)
    frame["latency_ms"] = frame["latency_ms"].astype(float)
    frame["status"] = frame["status"].astype(int)
    return frame


def simulate(
    examples: pd.DataFrame,
    predictor_url: str,
    collector_url: str,
    *,
    endpoint: str,
    cfg: TrafficConfig,
    phase: str,
    canary_percent: int | None = None,
    oos_label: str = "oos",
    seed_offset: int = 0,
    progress: Callable[[int, int], None] | None = None,
    route: Callable[[float], str] | None = None,
) -> pd.DataFrame:
    """Send every example once as a user message; one row per request, in the examples' order.

    Columns are ``COLUMNS``: ``fallback``/``correct`` are NA and ``predicted_intent`` empty where the
    request failed (``status`` is its HTTP status, 0 when no answer came; ``error`` says why);
    ``feedback`` is the kind the collector acknowledged, "" for none.
    """
    missing = {"text", "intent"} - set(examples.columns)
    if missing:
        raise FlywheelError(f"traffic examples lack column(s) {', '.join(sorted(missing))}: need text and intent")
    if examples.empty:
        raise FlywheelError(f"traffic phase {phase!r}: no examples to send")
    canary_percent = canary_percent or 0
    if not 0 <= canary_percent <= 100:
        raise FlywheelError(f"canary_percent is {canary_percent}: a share of traffic lies in 0..100")
    if route is not None and canary_percent:
        raise FlywheelError("give canary_percent or route, not both: the route decides every request's arm")
    if seed_offset < 0:
        raise FlywheelError(f"seed_offset is {seed_offset}: it must be non-negative")
    predictor_url, collector_url = predictor_url.rstrip("/"), collector_url.rstrip("/")
    messages = plan_messages(examples, route or by_percent(canary_percent), cfg, seed_offset)
    arms = {m.arm for m in messages} | {STABLE}
    endpoints = [endpoint] + ([f"{endpoint}-canary"] if CANARY in arms else [])
    check_ready(predictor_url, collector_url, endpoints, cfg.timeout_s)

    total, allowed_failures = len(messages), int(MAX_FAILED_SHARE * len(messages))
    rows: list[dict | None] = [None] * total
    failures: list[str] = []
    step = max(1, total // 100)
    if progress:
        progress(0, total)
    users = _Users(predictor_url, collector_url, endpoint, cfg, phase, oos_label)
    pool = ThreadPoolExecutor(cfg.concurrency, thread_name_prefix="flywheel-user")
    try:
        # at most 2 x concurrency messages queued at a time: a stop leaves little to cancel
        pending, queue, done = {}, iter(messages), 0
        while True:
            while len(pending) < 2 * cfg.concurrency and (message := next(queue, None)) is not None:
                pending[pool.submit(users.send, message)] = message.index
            if not pending:
                break
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                row = rows[pending.pop(future)] = future.result()
                done += 1
                if row["error"]:
                    failures.append(row["error"])
                if progress and (done % step == 0 or done == total):
                    progress(done, total)
            if len(failures) > allowed_failures:
                for future in pending:
                    future.cancel()
                break
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        users.close()
    if len(failures) > allowed_failures:
        examples_of = "; ".join(dict.fromkeys(failures))[:600]  # distinct errors, in the order they came
        raise FlywheelError(
            f"traffic phase {phase!r}: {len(failures)} of {total} requests failed (more than "
            f"{MAX_FAILED_SHARE:.0%}; predictor {predictor_url}, collector {collector_url}): {examples_of}"
        )
    return _frame(rows)
