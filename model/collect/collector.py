"""The collector: an HTTP service that stores what KServe's logger and the chat front end send.

Every POST is one CloudEvent, binary mode (``ce-*`` headers, the body is the payload) or structured
mode (``application/cloudevents+json``), parsed with the ``cloudevents`` package:
- ``org.kubeflow.serving.inference.request`` / ``.response``: posted by KServe's request/response
  logger; ``ce-id`` is the request id and joins the two, which may arrive in either order.
- ``org.flywheel.feedback``: from the chat front end, a JSON body ``{"kind": "thumbs_up" |
  "thumbs_down" | "abandoned" | "escalated" | "resolved", "request_id": ..., "conversation_id": ...,
  "comment": ...}`` naming a request or a conversation (or both).

Personal data never reaches the store: every user text (the strings of a request body, V1
``instances`` and V2 ``inputs`` data alike, and a feedback ``comment``) goes through the same
redaction as ``flywheel prepare`` (``data_checks.pii``, one scanner per process) before the row is
written, with the request's redaction map beside it. Response bodies hold the model's outputs
(intents, scores, catalog replies, entities) and are kept as they are, but for each entity's
``text``, a copy of the user's characters, which is removed (``model.collect.redaction``).

``/metrics`` counts events by outcome, and ``flywheel_feedback_total{kind, arm, model_version}``:
feedback on the answer it names, looked up in the store, which the alert rules and canary analysis
read (``unknown`` when the feedback names only a conversation). Feedback can arrive before the
answer it names (KServe's logger posts asynchronously, a user may be quicker): it is then counted
once that answer is stored, or as ``unknown`` after about five seconds.

200 means stored and committed (or already stored: redelivery is harmless). Bad input gets a 4xx
with the reason and touches nothing; only a store failure gives 503. KServe's logger does not
retry and treats anything but 200 as lost, so the handler is short: validate, redact, commit,
answer (parsing and redaction run on a worker thread, so a long text does not stall other events).
"""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import sqlalchemy as sa
import uvicorn
from cloudevents.exceptions import GenericException
from cloudevents.http import from_http
from prometheus_client import CollectorRegistry, Counter, Histogram, exposition
from prometheus_client.core import GaugeMetricFamily
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from data_checks.pii import Scanner  # cheap: Presidio itself loads when the first scanner is built
from model.collect.arms import UNKNOWN, ArmMap
from model.collect.export import answer_version
from model.collect.redaction import Redact, redact_request, storable_json, strip_entity_texts, without_surrogates
from model.collect.store import GroupCommitWriter, count_rows, open_store, read_response
from model.core.config import CollectorConfig, PiiConfig
from model.core.http_guard import BodyLimit, ensure_can_listen
from model.core.steps import StepResult

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
FEEDBACK_TYPE = "org.flywheel.feedback"
EVENT_TYPES = (REQUEST_TYPE, RESPONSE_TYPE, FEEDBACK_TYPE)
FEEDBACK_KINDS = ("thumbs_up", "thumbs_down", "abandoned", "escalated", "resolved")
MAX_ID_CHARS = 200
UNKNOWN_ANSWER = (UNKNOWN, UNKNOWN)
# KServe's logger posts the response event after answering, without waiting; feedback naming an
# answer not stored yet is counted once it is, looked up after each of these pauses (seconds)
LATE_ANSWER_WAITS_S = (0.1, 0.4, 1.5, 3.0)


class BadEvent(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def _parse_time(value, what: str) -> datetime:
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(str(value))
        except ValueError as exc:
            raise BadEvent(400, f"{what} {value!r} is not an RFC 3339 timestamp") from exc
    # stored in UTC: SQLite keeps the wall-clock time only, so an offset would shift the event in time
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def _text_id(value, what: str, required: bool) -> str:
    if value is None or value == "":
        if required:
            raise BadEvent(400, f"missing {what}")
        return ""
    if not isinstance(value, str):
        raise BadEvent(400, f"{what} must be a string, got {type(value).__name__}")
    if len(value) > MAX_ID_CHARS:
        raise BadEvent(400, f"{what} is {len(value)} characters long, the limit is {MAX_ID_CHARS}")
    if "\x00" in value:
        raise BadEvent(400, f"{what} contains a NUL character")
    return value


def _payload(data, event_type: str, redact: Redact) -> tuple[object, str, bool, str]:
    """(payload, text to store, whether it is JSON, redaction map) of an event's data, user texts
    redacted and entity texts removed (``model.collect.redaction``).

    The body is JSON whatever the Content-Type says (KServe's logger forwards the client's own, and
    ``curl -d`` sends form-encoded JSON); a request or response body that is not JSON is kept as raw
    text, redacted as one string, and marked so. Only feedback, which the chat front end sends, must be JSON.
    """
    if data is None:
        raise BadEvent(400, "event has no body")
    if not isinstance(data, (bytes, bytearray, str)):  # structured mode: the data as parsed JSON
        payload = without_surrogates(data)
        text, is_json = json.dumps(payload), True
    else:
        raw = data.decode("utf-8", errors="replace") if isinstance(data, (bytes, bytearray)) else data
        raw = without_surrogates(raw)  # a str from structured mode may hold them already
        try:
            (payload, text), is_json = storable_json(raw), True
        except ValueError:
            if event_type == FEEDBACK_TYPE:
                raise BadEvent(400, "feedback body is not JSON: send a JSON object") from None
            payload, text, is_json = raw, raw, False
    stored, redactions = payload, ""
    if event_type == REQUEST_TYPE:
        stored, redactions = redact_request(payload, redact)
    elif event_type == RESPONSE_TYPE:  # one not JSON (the binary extension) may hold entity texts anywhere
        stored = strip_entity_texts(payload) if is_json else redact(payload)[0]
    if stored != payload:
        text = json.dumps(stored, ensure_ascii=False) if is_json else stored
    return payload, text, is_json, redactions


def parse_event(headers: dict[str, str], body: bytes, now: datetime, redact: Redact) -> tuple[str, dict]:
    """One HTTP request to (table name, row) with user texts redacted, or BadEvent naming what is wrong.

    Any Content-Type is accepted: only ``application/cloudevents+json`` changes how the event is read
    (structured mode); anything else, or none, is a binary-mode event whose body is the payload.
    """
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    structured = content_type == "application/cloudevents+json"
    if not structured:
        missing = [h for h in ("ce-specversion", "ce-id", "ce-type", "ce-source") if h not in headers]
        if missing:
            raise BadEvent(400, f"missing {', '.join(missing)} header(s): not a binary-mode CloudEvent")
    try:
        event = from_http(headers, body, data_unmarshaller=lambda raw: raw)
    except GenericException as exc:
        raise BadEvent(400, f"not a valid CloudEvent: {exc}") from exc
    attrs = event.get_attributes()
    event_type = attrs.get("type")
    if event_type not in EVENT_TYPES:
        raise BadEvent(400, f"unknown event type {event_type!r} (accepted: {', '.join(EVENT_TYPES)})")
    event_id = _text_id(attrs.get("id"), "event id (ce-id)", required=True)
    payload, text, is_json, redactions = _payload(event.get_data(), event_type, redact)
    common = {
        "event_id": event_id,
        "event_time": _parse_time(attrs.get("time") or now, "ce-time"),
        "received_at": now,
        "source": _text_id(attrs.get("source"), "ce-source", required=True)[:500],
    }
    if event_type == FEEDBACK_TYPE:
        fields = _feedback_fields(payload)
        return "feedback", {**common, **fields, "comment": redact(fields["comment"])[0]}
    stored_type = str(attrs.get("datacontenttype") or "application/json") if structured else content_type
    return "inference", {
        **common,
        "kind": "request" if event_type == REQUEST_TYPE else "response",
        "inference_service": str(attrs.get("inferenceservicename", ""))[:200],
        "namespace": str(attrs.get("namespace", ""))[:200],
        "component": str(attrs.get("component", ""))[:100],
        "endpoint": str(attrs.get("endpoint", ""))[:100],
        "metadata_json": _metadata(attrs.get("metadata")),
        "content_type": stored_type[:100],
        "body": text,
        "body_is_json": is_json,
        "redactions": redactions,
        "arm": "",  # the collector attributes it (model.collect.arms)
    }


def _metadata(raw) -> str:
    if raw in (None, ""):
        return "{}"
    try:
        value = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError as exc:
        raise BadEvent(400, f"ce-metadata is not a JSON object: {exc}") from exc
    if not isinstance(value, dict):
        raise BadEvent(400, f"ce-metadata must be a JSON object, got {type(value).__name__}")
    return json.dumps(value)


def _feedback_fields(payload) -> dict:
    if not isinstance(payload, dict):
        raise BadEvent(400, f"feedback body must be a JSON object, got {type(payload).__name__}")
    kind = payload.get("kind")
    if kind not in FEEDBACK_KINDS:
        raise BadEvent(400, f"feedback kind {kind!r} unknown (accepted: {', '.join(FEEDBACK_KINDS)})")
    request_id = _text_id(payload.get("request_id"), "request_id", required=False)
    conversation_id = _text_id(payload.get("conversation_id"), "conversation_id", required=False)
    if not request_id and not conversation_id:
        raise BadEvent(400, "feedback must name a request_id or a conversation_id")
    comment = payload.get("comment", "")
    if not isinstance(comment, str):
        raise BadEvent(400, f"comment must be a string, got {type(comment).__name__}")
    return {
        "kind": kind,
        "request_id": request_id,
        "conversation_id": conversation_id,
        "comment": comment.replace("\x00", "")[:2000],
    }


class ArmInfo:
    """``flywheel_arm_info{arm, model_version} 1`` for each arm the mounted ConfigMap names, read at scrape.

    The predictor's series carry only ``model_version`` (a revision cannot know its arm); the alert
    rules and the dashboard join them with this to say which arm a version serves.
    """

    def __init__(self, arm_map: ArmMap):
        self.arm_map = arm_map

    def collect(self):
        info = GaugeMetricFamily(
            "flywheel_arm_info", "the model version each traffic arm serves now", labels=["arm", "model_version"]
        )
        for arm, version in sorted(self.arm_map.arms().items()):
            info.add_metric([arm, version], 1)
        yield info


class CollectorMetrics:
    """The collector's Prometheus series: events by outcome, feedback per arm and version, time to acknowledge,
    and which version each arm serves."""

    def __init__(self, registry: CollectorRegistry, arm_map: ArmMap):
        self.registry = registry
        registry.register(ArmInfo(arm_map))
        self.events = Counter(
            "flywheel_collector_events", "events by type and outcome", ["type", "outcome"], registry=registry
        )
        # what the alert rules and canary analysis query: feedback on the answers of each model version
        self.feedback = Counter(
            "flywheel_feedback",
            "stored feedback by kind, on answers of this arm and model version ('unknown' if it names no answer)",
            ["kind", "arm", "model_version"],
            registry=registry,
        )
        self.latency = Histogram(
            "flywheel_collector_ack_seconds",
            "time from request to commit and answer",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=registry,
        )


class Collector:
    """The collector's handlers and what they share: the store, its group-commit writer, the PII scanner,
    the metrics, and the feedback counts waiting for their answer."""

    def __init__(self, cfg: CollectorConfig, registry: CollectorRegistry, pii_cfg: PiiConfig):
        self.scanner = Scanner(pii_cfg)  # once per process: building the analyzer takes seconds
        self.engine = open_store(cfg.store_url, cfg.sqlite_synchronous)
        self.writer = GroupCommitWriter(self.engine)
        self.arm_map = ArmMap(cfg.arms_dir)
        self.metrics = CollectorMetrics(registry, self.arm_map)
        self._late_counts: set[asyncio.Task] = set()

    async def receive(self, request: Request) -> Response:
        """Validate, redact, commit, answer: 200 only once the event is committed (or was already stored)."""
        started = datetime.now(UTC)
        try:
            headers = {k.lower(): v for k, v in request.headers.items()}
            table, row = await run_in_threadpool(
                parse_event, headers, await request.body(), started, self.scanner.redact
            )
        except BadEvent as bad:
            claimed = request.headers.get("ce-type")  # only known types become labels: no unbounded series
            self.metrics.events.labels(claimed if claimed in EVENT_TYPES else "other", "rejected").inc()
            return JSONResponse({"error": bad.reason}, status_code=bad.status)
        event_type = request.headers.get("ce-type", FEEDBACK_TYPE if table == "feedback" else "inference")
        if table == "inference":
            row["arm"] = self.attribute(row)
        try:
            new = await self.writer.write(table, row)
        except Exception as exc:  # noqa: BLE001 - the store is down or refused: not acknowledged
            self.metrics.events.labels(event_type, "store_error").inc()
            return JSONResponse({"error": f"store unavailable: {type(exc).__name__}: {exc}"}, status_code=503)
        self.metrics.events.labels(event_type, "stored" if new else "duplicate").inc()
        self.metrics.latency.observe((datetime.now(UTC) - started).total_seconds())
        if new and table == "feedback":
            await self.count_feedback(row["kind"], row["request_id"])
        return JSONResponse({"id": row["event_id"], "stored": new, "duplicate": not new})

    def attribute(self, row: dict) -> str:
        """The arm of an inference event: the one serving its answer's model version. A request event is
        ``unknown``: it names no version, and ``ce-source`` is the same for every revision (``model.collect.arms``)."""
        return self.arm_map.arm_of(answer_version(row)) if row["kind"] == "response" else UNKNOWN

    async def count_feedback(self, kind: str, request_id: str) -> None:
        """Count stored feedback on the answer it names, now or once that answer is stored."""
        labels = await run_in_threadpool(self.answer_of, request_id)
        if labels is None and request_id:
            # the logger posts asynchronously: a quick user can rate an answer before it is logged
            task = asyncio.get_running_loop().create_task(self.count_late(kind, request_id))
            self._late_counts.add(task)
            task.add_done_callback(self._late_counts.discard)
        else:
            self.metrics.feedback.labels(kind, *(labels or UNKNOWN_ANSWER)).inc()

    def answer_of(self, request_id: str) -> tuple[str, str] | None:
        """Arm and model version of the answer a feedback names (its stored response event), if any."""
        try:
            response = read_response(self.engine, request_id) if request_id else None
        except sa.exc.SQLAlchemyError:
            response = None  # the feedback is stored; only its metric labels are unknown
        if response is None:
            return None
        return response["arm"] or UNKNOWN, answer_version(response) or UNKNOWN

    async def count_late(self, kind: str, request_id: str) -> None:
        """Count feedback whose answer was not stored yet once it is, or as 'unknown' after LATE_ANSWER_WAITS_S."""
        labels = None
        for wait in LATE_ANSWER_WAITS_S:
            await asyncio.sleep(wait)
            labels = await run_in_threadpool(self.answer_of, request_id)
            if labels is not None:
                break
        self.metrics.feedback.labels(kind, *(labels or UNKNOWN_ANSWER)).inc()

    def _store_answers(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    async def health(self, _request: Request) -> Response:
        """Ready only while the store answers: a collector that cannot commit must not receive events."""
        try:
            await run_in_threadpool(self._store_answers)
        except sa.exc.SQLAlchemyError as exc:
            return JSONResponse({"status": "store unavailable", "error": str(exc).splitlines()[0]}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def prometheus(self, request: Request) -> Response:
        encoder, content_type = exposition.choose_encoder(request.headers.get("accept"))
        return Response(encoder(self.metrics.registry), headers={"content-type": content_type})

    @asynccontextmanager
    async def lifespan(self, _app):
        yield
        for task in list(self._late_counts):
            task.cancel()
        self.writer.close()
        self.engine.dispose()


def build_app(
    cfg: CollectorConfig, registry: CollectorRegistry | None = None, pii_cfg: PiiConfig | None = None
) -> Starlette:
    """The collector's ASGI app; the store opens (and its tables are created) and the PII scanner is built here."""
    collector = Collector(cfg, registry or CollectorRegistry(), pii_cfg or PiiConfig())
    app = Starlette(
        routes=[
            Route("/", collector.receive, methods=["POST"]),
            Route("/events", collector.receive, methods=["POST"]),
            Route("/healthz", collector.health, methods=["GET"]),
            Route("/metrics", collector.prometheus, methods=["GET"]),
        ],
        lifespan=collector.lifespan,
    )
    app.add_middleware(BodyLimit, max_body_bytes=cfg.max_body_bytes)
    app.state.engine, app.state.writer, app.state.scanner = collector.engine, collector.writer, collector.scanner
    return app


def collect_command(*, collect: CollectorConfig, pii: PiiConfig) -> StepResult:
    """Store KServe logger CloudEvents and user feedback, personal data redacted (idempotent, durable on 200)."""
    return StepResult(*collect_step(collect, pii))


def collect_step(cfg: CollectorConfig, pii_cfg: PiiConfig | None = None) -> tuple[dict, str]:
    """Run the collector until SIGTERM/SIGINT."""
    ensure_can_listen(cfg.host, cfg.http_port)
    app = build_app(cfg, pii_cfg=pii_cfg)
    started = datetime.now(UTC)
    uvicorn.Server(
        uvicorn.Config(
            app, host=cfg.host, port=cfg.http_port, log_level="warning", access_log=False, timeout_graceful_shutdown=10
        )
    ).run()
    counts = count_rows(app.state.engine)
    result = {
        "address": f"http://{cfg.host}:{cfg.http_port}",
        "store": app.state.engine.url.render_as_string(hide_password=True),
        "started": started.isoformat(),
        "stored_rows": counts,
    }
    md = (
        f"## Collector on {result['address']}\n\nStore `{result['store']}`: "
        f"{counts['inference']} inference events, {counts['feedback']} feedback events.\n"
    )
    return result, md
