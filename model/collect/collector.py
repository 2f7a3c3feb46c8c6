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

200 means kept: committed to the store (or already stored: redelivery is harmless), or, while the
store cannot take it (down, unreachable, slower than ``store_timeout_s``), committed to the spool on
the collector's own disk (``model.collect.spool``), from which it is written to the store once it
answers, oldest first, before any newer event. Bad input gets a 4xx with the reason and touches
nothing; 503 only when an event cannot be kept: the spool is full, or the store answered and refused
the row. KServe's logger does not retry and treats anything but 200 as lost, so the handler is
short: validate, redact, commit, answer (parsing and redaction run on a worker thread, so a long
text does not stall other events).

Health, as Kubernetes acts on it (kubernetes.io/docs/concepts/configuration/liveness-readiness-startup-probes:
a failed liveness probe restarts the container, a failed readiness probe removes the pod from the
Service's endpoints): ``/livez`` answers while the process serves HTTP, whatever the store does, so a
database outage restarts nothing (a restart would only stop the collector from keeping events);
``/healthz`` (readiness) answers 200 while the collector can keep an event, which with the spool
includes a store outage: a collector taken out of the Service would not keep the logger's events,
which then fail to send and are gone. It answers 503 once the spool is full, so the Service sends
to replicas that still have room. Whether the store is up is in its body and in
``flywheel_collector_store_up``; the spool's fill in ``flywheel_collector_spool_bytes``.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
import uvicorn
from prometheus_client import CollectorRegistry, exposition
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from data_checks.pii import Scanner  # cheap: Presidio itself loads when the first scanner is built
from model.collect.arms import UNKNOWN, ArmMap
from model.collect.collector_metrics import CollectorMetrics, SpoolStatus
from model.collect.events import EVENT_TYPES, FEEDBACK_TYPE, BadEvent, parse_event, storable
from model.collect.export import answer_version
from model.collect.spool import Spool
from model.collect.store import (
    GroupCommitWriter,
    count_rows,
    create_tables,
    read_response,
    store_engine,
    store_unavailable,
)
from model.core.batching import AsyncBatcher
from model.core.config import CollectorConfig, PiiConfig, work_dir
from model.core.errors import FlywheelError
from model.core.http_guard import BodyLimit, ensure_can_listen
from model.core.steps import StepResult

UNKNOWN_ANSWER = (UNKNOWN, UNKNOWN)
# KServe's logger posts the response event after answering, without waiting; feedback naming an
# answer not stored yet is counted once it is, looked up after each of these pauses (seconds)
LATE_ANSWER_WAITS_S = (0.1, 0.4, 1.5, 3.0)
# while the store is down the spool is tried again after a pause that doubles from the first to the last
DRAIN_RETRY_S = (0.25, 2.0)
DRAIN_BATCH = 500  # spooled rows per store transaction: few commits, each still short
# on shutdown, time to hand what the spool holds to a store that is up: a deleted pod's emptyDir goes with it
SHUTDOWN_DRAIN_S = 5.0

log = logging.getLogger(__name__)


class Collector:
    """The collector's handlers and what they share: the store, its group-commit writer, the spool and
    the task that empties it into the store, the PII scanner, the metrics, and the feedback counts
    waiting for their answer.

    Events go straight to the store while ``spooling`` is off. It turns on when the store fails to
    take one (that event and every later one go to the spool, so none overtakes another) and off
    again only once the spool is empty, no event is on its way into it and the store answers.
    """

    def __init__(self, cfg: CollectorConfig, registry: CollectorRegistry, pii_cfg: PiiConfig):
        self.cfg = cfg
        self.scanner = Scanner(pii_cfg)  # once per process: building the analyzer takes seconds
        self.engine = store_engine(cfg.store_url, cfg.sqlite_synchronous)
        self.spool = Spool(cfg.spool_dir or work_dir() / "collector-spool", cfg.spool_max_bytes)
        self.writer = GroupCommitWriter(self.engine)
        self._spool_writer = AsyncBatcher(self.spool.append, max_batch_size=512, thread_name="flywheel-spool")
        self._drain_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flywheel-drain")
        self.store_up = self._tables_ready = self._create_tables()
        # a spool left by the last run is replayed before any new event is stored
        self.spooling = self.spool.events > 0 or not self.store_up
        self._appending = 0  # events on their way into the spool
        self._spool_waiting: asyncio.Event | None = None  # made with the drain task, on the running loop
        self._drain_task: asyncio.Task | None = None
        self.arm_map = ArmMap(cfg.arms_dir)
        self.metrics = CollectorMetrics(registry, self.arm_map)
        registry.register(SpoolStatus(self))
        self._late_counts: set[asyncio.Task] = set()

    def _create_tables(self) -> bool:
        """Whether the store answered; a store that answers but refuses (no permission) is a FlywheelError."""
        try:
            create_tables(self.engine)
        except sa.exc.SQLAlchemyError as exc:
            where = self.engine.url.render_as_string(hide_password=True)
            if not store_unavailable(exc):
                raise FlywheelError(f"cannot open store {where}: {exc}") from exc
            log.warning("store %s unavailable at start (%s): events go to the spool %s until it answers",
                        where, str(exc).splitlines()[0], self.spool.folder)  # fmt: skip
            return False
        return True

    async def receive(self, request: Request) -> Response:
        """Validate, redact, commit, answer: 200 only once the event is committed, to the store (or was already
        stored) or, while the store cannot take it, to the spool."""
        started = datetime.now(UTC)
        try:
            headers = {k.lower(): v for k, v in request.headers.items()}
            table, row = await run_in_threadpool(
                parse_event, headers, await request.body(), started, self.scanner.redact
            )
            storable(row)
        except BadEvent as bad:
            claimed = request.headers.get("ce-type")  # only known types become labels: no unbounded series
            self.metrics.events.labels(claimed if claimed in EVENT_TYPES else "other", "rejected").inc()
            return JSONResponse({"error": bad.reason}, status_code=bad.status)
        event_type = request.headers.get("ce-type", FEEDBACK_TYPE if table == "feedback" else "inference")
        if table == "inference":
            row["arm"] = self.attribute(row)
        if self.spooling:
            return await self.keep_in_spool(event_type, table, row, started)
        try:
            new = await asyncio.wait_for(self.writer.write(table, row), self.cfg.store_timeout_s)
        except Exception as exc:  # noqa: BLE001 - sorted below: the store is unavailable, or it refused the row
            if not (isinstance(exc, TimeoutError) or store_unavailable(exc)):
                # spooled, it would be refused again and hold up the events behind it: not acknowledged
                self.metrics.events.labels(event_type, "store_error").inc()
                return JSONResponse({"error": f"store refused the event: {type(exc).__name__}: {exc}"}, status_code=503)
            # a write that timed out may still commit: the spooled copy is then a duplicate, which the store ignores
            self.store_failed(exc)
            return await self.keep_in_spool(event_type, table, row, started)
        self.store_answered()
        self.metrics.events.labels(event_type, "stored" if new else "duplicate").inc()
        self.metrics.latency.observe((datetime.now(UTC) - started).total_seconds())
        if new and table == "feedback":
            await self.count_feedback(row["kind"], row["request_id"])
        return JSONResponse({"id": row["event_id"], "stored": new, "duplicate": not new})

    async def keep_in_spool(self, event_type: str, table: str, row: dict, started: datetime) -> Response:
        """200 once the event is committed to the spool; 503 if the spool is full or fails."""
        self._appending += 1
        try:
            kept = await self._spool_writer.submit((table, row))
        except Exception as exc:  # noqa: BLE001 - the spool's disk failed: not kept, not acknowledged
            self.metrics.events.labels(event_type, "spool_error").inc()
            return JSONResponse({"error": f"store unavailable, and the spool failed: {exc}"}, status_code=503)
        finally:
            self._appending -= 1
        if not kept:
            self.metrics.events.labels(event_type, "spool_full").inc()
            reason = f"store unavailable, and the spool is full ({self.spool.max_bytes} bytes): not kept"
            return JSONResponse({"error": reason}, status_code=503)
        self.metrics.events.labels(event_type, "spooled").inc()
        self.metrics.latency.observe((datetime.now(UTC) - started).total_seconds())
        self._wake_drain()
        # whether it is a redelivery is known once it reaches the store
        return JSONResponse({"id": row["event_id"], "stored": False, "duplicate": None, "spooled": True})

    def store_failed(self, exc: BaseException) -> None:
        if self.store_up:
            log.warning("store unavailable (%s: %s): events go to the spool %s", type(exc).__name__,
                        (str(exc).splitlines() or [""])[0], self.spool.folder)  # fmt: skip
        self.store_up = False
        self.spooling = True
        self._wake_drain()

    def store_answered(self) -> None:
        if not self.store_up:
            log.warning("store answers again: %d spooled events to write", self.spool.events)
        self.store_up = True

    def _wake_drain(self) -> None:
        if self._spool_waiting is not None:
            self._spool_waiting.set()

    async def drain(self) -> None:
        """Empty the spool into the store, oldest first, whenever it holds events; retry while the store is down."""
        loop = asyncio.get_running_loop()
        pause = DRAIN_RETRY_S[0]
        while True:
            if not self.spooling:
                await self._spool_waiting.wait()
                self._spool_waiting.clear()
                continue
            try:
                drained = await loop.run_in_executor(self._drain_thread, self.drain_some)
            except Exception as exc:  # noqa: BLE001 - down, or refusing: the rows stay spooled, in order
                self.store_failed(exc)
                await asyncio.sleep(pause)
                pause = min(2 * pause, DRAIN_RETRY_S[1])
                continue
            pause = DRAIN_RETRY_S[0]
            self.store_answered()
            for table, row, new in drained:
                self.metrics.drained.labels("stored" if new else "duplicate").inc()
                if new and table == "feedback":
                    await self.count_feedback(row["kind"], row["request_id"])
            if not drained and self._appending == 0 and self.spool.events == 0:
                self.spooling = False  # decided on the loop, between two events: none can slip past the spool

    def drain_some(self) -> list[tuple[str, dict, bool]]:
        """On the drain thread: the oldest spooled rows in one store transaction, then deleted from the spool
        (a crash in between writes them again; the store ignores what it holds). None left: the store is pinged."""
        if not self._tables_ready:
            create_tables(self.engine)
            self._tables_ready = True
        batch = self.spool.oldest(DRAIN_BATCH)
        if not batch:
            with self.engine.connect() as conn:  # direct writes resume only with a store that answers
                conn.execute(sa.text("SELECT 1"))
            return []
        news = self.writer.commit([(spooled.table, spooled.row) for spooled in batch])
        self.spool.remove_through(batch[-1].seq)
        return [(spooled.table, spooled.row, new) for spooled, new in zip(batch, news)]

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

    async def live(self, _request: Request) -> Response:
        """Liveness: the process serves HTTP. Nothing else: restarting it cures no outage of the store."""
        return JSONResponse({"status": "alive"})

    async def ready(self, _request: Request) -> Response:
        """Readiness: 200 while an event sent here is kept (by the store, or by the spool while the store is
        down); 503 once the spool refuses events for room, until the store has taken some of them."""
        spool = self.spool
        body = {
            "status": "spool full" if spool.full else "ok",
            "store": "up" if self.store_up else "down",
            "spool": {"events": spool.events, "bytes": spool.bytes, "max_bytes": spool.max_bytes},
        }
        return JSONResponse(body, status_code=503 if spool.full else 200)

    async def prometheus(self, request: Request) -> Response:
        encoder, content_type = exposition.choose_encoder(request.headers.get("accept"))
        return Response(encoder(self.metrics.registry), headers={"content-type": content_type})

    @asynccontextmanager
    async def lifespan(self, _app):
        self._spool_waiting = asyncio.Event()
        self._drain_task = asyncio.get_running_loop().create_task(self.drain())
        yield
        self._drain_task.cancel()
        await self.last_drain()
        for task in list(self._late_counts):
            task.cancel()
        self.writer.close()
        self._spool_writer.close(wait=True)
        self._drain_thread.shutdown(wait=True)
        self.spool.close()
        self.engine.dispose()

    async def last_drain(self) -> None:
        """On shutdown, up to SHUTDOWN_DRAIN_S to write what the spool holds; what is left stays on disk."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SHUTDOWN_DRAIN_S
        while self.spool.events and (left := deadline - loop.time()) > 0:
            try:
                drained = await asyncio.wait_for(loop.run_in_executor(self._drain_thread, self.drain_some), left)
            except Exception:  # noqa: BLE001 - the store is still down: replayed on the next start
                return
            if not drained:
                return


def build_app(
    cfg: CollectorConfig, registry: CollectorRegistry | None = None, pii_cfg: PiiConfig | None = None
) -> Starlette:
    """The collector's ASGI app; the store opens (and its tables are created) and the PII scanner is built here."""
    collector = Collector(cfg, registry or CollectorRegistry(), pii_cfg or PiiConfig())
    app = Starlette(
        routes=[
            Route("/", collector.receive, methods=["POST"]),
            Route("/events", collector.receive, methods=["POST"]),
            Route("/healthz", collector.ready, methods=["GET"]),
            Route("/livez", collector.live, methods=["GET"]),
            Route("/metrics", collector.prometheus, methods=["GET"]),
        ],
        lifespan=collector.lifespan,
    )
    app.add_middleware(BodyLimit, max_body_bytes=cfg.max_body_bytes)
    app.state.engine, app.state.writer, app.state.scanner = collector.engine, collector.writer, collector.scanner
    app.state.spool = collector.spool
    return app


@dataclass(frozen=True)
class CollectorRun:
    """What a collector served, once it stopped: where, into which store, and what it holds and still waits."""

    address: str
    store: str  # the store's URL, password hidden
    started: str  # ISO 8601
    stored_rows: dict[str, int] | None  # rows per table; None when the store was down at shutdown
    spool: dict  # folder, events waiting for the store


def collect_command(*, collect: CollectorConfig, pii: PiiConfig) -> StepResult[CollectorRun]:
    """Store KServe logger CloudEvents and user feedback, personal data redacted (idempotent, durable on 200)."""
    return StepResult(*collect_step(collect, pii))


def collect_step(cfg: CollectorConfig, pii_cfg: PiiConfig | None = None) -> tuple[CollectorRun, str]:
    """Run the collector until SIGTERM/SIGINT."""
    ensure_can_listen(cfg.host, cfg.http_port)
    app = build_app(cfg, pii_cfg=pii_cfg)
    started = datetime.now(UTC)
    uvicorn.Server(
        uvicorn.Config(
            app, host=cfg.host, port=cfg.http_port, log_level="warning", access_log=False, timeout_graceful_shutdown=10
        )
    ).run()
    try:
        counts = count_rows(app.state.engine)
    except sa.exc.SQLAlchemyError:
        counts = None  # the store is down: what was not written waits in the spool
    result = CollectorRun(
        address=f"http://{cfg.host}:{cfg.http_port}",
        store=app.state.engine.url.render_as_string(hide_password=True),
        started=started.isoformat(),
        stored_rows=counts,
        spool={"folder": str(app.state.spool.folder), "events": app.state.spool.events},
    )
    stored = (
        f"{counts['inference']} inference events, {counts['feedback']} feedback events"
        if counts
        else "unavailable at shutdown"
    )
    md = (
        f"## Collector on {result.address}\n\nStore `{result.store}`: {stored}. "
        f"Spool `{result.spool['folder']}`: {result.spool['events']} events waiting for the store.\n"
    )
    return result, md
