"""The collector survives its database: a real PostgreSQL stopped (``pg_ctl stop -m fast``) and started
again under load, the collector killed while events wait in its spool, a spool that fills.

Events are binary-mode CloudEvents as KServe's logger posts them (kserve ``pkg/logger/worker.go``;
shared/notes/kserve-logger.md): ``ce-source`` ``http://localhost:9081/`` as from a Knative pod,
``ce-endpoint`` empty, ``ce-metadata`` JSON, ``ce-recordedtime``, the client's own Content-Type.
"Acknowledged" is an HTTP 200, the only answer the logger takes as delivered. Order is checked on
PostgreSQL's own record of it: ``xmin``, the id of the transaction that inserted a row, grows with
each transaction on a fresh cluster, so an event acknowledged before another was sent must not
carry a larger ``xmin`` than that other.
"""

from __future__ import annotations

import json
import signal
import socket
import sys
import threading
import time
import uuid
from datetime import UTC, datetime

import httpx
import pytest
import sqlalchemy as sa
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent
from starlette.testclient import TestClient

from model.collect.collector import build_app
from model.collect.events import REQUEST_TYPE, RESPONSE_TYPE
from model.collect.spool import Spool
from model.core.config import CollectorConfig
from model.core.errors import FlywheelError
from model.core.processes import Supervised
from scripts.bench_collector import out_of_order, stored_xmin
from scripts.throwaway_postgres import ThrowawayPostgres
from tests.helpers.real_parts import require_real_part

AGENT_SOURCE = "http://localhost:9081/"  # what a Knative pod's agent sends (kserve cmd/agent/main.go)


def logger_event(kind: str, request_id: str, text: str) -> tuple[dict, bytes]:
    """One event of a V1 call, headers and body exactly as KServe's logger posts them."""
    version = "7"
    body = (
        {"instances": [text]}
        if kind == "request"
        else {"predictions": [{"intent": "order_status", "confidence": 0.9, "model_version": version}]}
    )
    attrs = {
        "type": REQUEST_TYPE if kind == "request" else RESPONSE_TYPE,
        "source": AGENT_SOURCE,
        "id": request_id,
        "time": datetime.now(UTC).isoformat(),
        "recordedtime": datetime.now(UTC).isoformat(),
        "inferenceservicename": "support-bot",
        "namespace": "chat",
        "component": "predictor",
        "endpoint": "",
        "metadata": json.dumps({"X-Conversation-Id": [f"conv-{request_id}"]}),
    }
    headers, data = to_binary(CloudEvent(attrs, json.dumps(body).encode()), data_marshaller=lambda d: d)
    headers.pop("content-type", None)
    headers["content-type"] = "application/json"  # the client's own
    return headers, data


def calls(run: str, n: int):
    """``n`` calls' events in the order a logger sends them: each request, then its response."""
    for i in range(n):
        rid = f"{run}-{i:05d}"
        yield f"{rid}/request", logger_event("request", rid, f"where is order {i}")
        yield f"{rid}/response", logger_event("response", rid, "")


@pytest.fixture(scope="module")
def cluster():
    """A PostgreSQL cluster of this module's own: stopping it must not touch the session's."""
    require_real_part("postgresql")
    pg = ThrowawayPostgres().start()
    yield pg
    pg.remove()


@pytest.fixture
def database(cluster) -> str:
    """A new database on the module's cluster, which is started again after the test if it stopped it."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(f"{cluster.url}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    yield f"{cluster.url}/{name}"
    try:
        cluster.start()
    except Exception:  # noqa: BLE001 - already running
        pass


def stored(url: str, run: str) -> dict[str, int]:
    """``<event id>/<kind>`` -> xmin of every stored event of one run; none stored twice."""
    xmin, rows = stored_xmin(url, run)
    assert rows == len(xmin), "an event is stored twice"
    return xmin


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CollectorProcess:
    """``flywheel collect`` on loopback, as the manifests run it (a store URL and a spool folder)."""

    def __init__(self, store_url: str, tmp_path, **flags):
        self.base = f"http://127.0.0.1:{free_port()}"
        port = self.base.rsplit(":", 1)[1]
        cmd = [sys.executable, "-m", "scripts.cli", "collect", "--http-port", port, "--store-url", store_url,
               "--spool-dir", str(tmp_path / "spool"), "--work-dir", str(tmp_path / "work")]  # fmt: skip
        for flag, value in flags.items():
            cmd += [f"--{flag}", str(value)]
        self.process = Supervised("the collector", cmd, tmp_path / "collector.log")

    def start(self) -> CollectorProcess:
        self.process.start().wait_ready(f"{self.base}/healthz", timeout_s=120)
        return self

    def metric(self, name: str) -> float:
        for line in httpx.get(f"{self.base}/metrics", timeout=10).text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def wait_for_empty_spool(self, limit_s: float = 120) -> None:
        """Until the spool is written to the store (bounded: a deadline for a broken drain, not a slow one)."""
        deadline = time.monotonic() + limit_s
        while self.metric("flywheel_collector_spool_events") or not self.metric("flywheel_collector_store_up"):
            assert time.monotonic() < deadline, self.process.tail()
            time.sleep(0.2)


class Load:
    """Senders posting a bounded list of events as a logger's workers do, each at once after the last
    answer; records when each was sent and answered."""

    def __init__(self, base: str, events, senders: int = 4):
        self.base, self.events, self.lock = base, iter(events), threading.Lock()
        self.sent: list[tuple[str, float, float, int]] = []  # key, sent, answered, status (0: no answer)
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._send, daemon=True) for _ in range(senders)]

    def _send(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stopping.is_set():
                with self.lock:
                    key, (headers, body) = next(self.events, (None, (None, None)))
                if key is None:
                    return
                at = time.monotonic()
                try:
                    status = client.post(self.base + "/", content=body, headers=headers).status_code
                except httpx.HTTPError:
                    status = 0
                with self.lock:
                    self.sent.append((key, at, time.monotonic(), status))

    def acknowledged(self) -> int:
        with self.lock:
            return sum(status == 200 for *_, status in self.sent)

    def wait_acknowledged(self, count: int, limit_s: float = 120) -> None:
        deadline = time.monotonic() + limit_s
        while self.acknowledged() < count:
            assert time.monotonic() < deadline, f"only {self.acknowledged()} of {count} acknowledged"
            assert any(t.is_alive() for t in self.threads), "the load ran out of events"
            time.sleep(0.05)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=60)


OUTAGE_S = 5  # a short stop: a restart of the database; scripts/bench_collector.py --store-outage 60 is the long one


@pytest.mark.real("postgresql")
def test_a_database_stop_under_load_loses_no_acknowledged_event(cluster, database, tmp_path):
    """Four senders post steadily; the database stops for OUTAGE_S (and at least 300 acknowledged events),
    then starts again. Every acknowledged event is stored once, in the order it was acknowledged."""
    collector = CollectorProcess(database, tmp_path).start()
    try:
        with Load(collector.base, calls("outage", 20_000)) as load:
            load.wait_acknowledged(200)
            cluster.stop()
            stopped, before_stop = time.monotonic(), load.acknowledged()
            load.wait_acknowledged(before_stop + 300)
            during = [httpx.get(f"{collector.base}/{path}", timeout=10) for path in ("healthz", "livez")]
            time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped)))
            spooled = collector.metric("flywheel_collector_spool_events")
            cluster.start()
            load.wait_acknowledged(load.acknowledged() + 300)
        collector.wait_for_empty_spool()
        drained = collector.metric('flywheel_collector_spool_drained_total{outcome="stored"}')
    finally:
        collector.process.stop(signal.SIGTERM, timeout_s=60)
    # while the database was down: alive, ready (it keeps events), the store reported down, events spooled
    assert [r.status_code for r in during] == [200, 200]
    assert during[0].json()["store"] == "down" and during[0].json()["spool"]["events"] > 0
    assert spooled > 0 and drained >= spooled
    statuses = {status for *_, status in load.sent}
    assert statuses == {200}, "an event was refused although the spool had room"
    xmin = stored(database, "outage")
    acked = [(key, at, answered) for key, at, answered, status in load.sent if status == 200]
    assert {key for key, *_ in acked} <= set(xmin), "acknowledged events were lost"
    assert set(xmin) == {key for key, *_ in acked}, "an event no one sent was stored"
    assert out_of_order(acked, xmin) == []


@pytest.mark.real("postgresql")
def test_the_spool_outlives_a_killed_collector_and_a_start_without_the_database(cluster, database, tmp_path):
    """Events spooled while the database is down survive a SIGKILL; the collector starts again (alive and
    ready) with the database still down, and writes the old spool before the newer events once it is back."""
    collector = CollectorProcess(database, tmp_path).start()
    events = list(calls("restart", 40))
    first, second = events[:50], events[50:]
    sent: list[str] = []
    try:
        cluster.stop()
        for key, (headers, body) in first:
            assert httpx.post(collector.base + "/", content=body, headers=headers, timeout=30).json()["spooled"]
            sent.append(key)
        collector.process.stop(signal.SIGKILL)
        collector.start()  # the database is still down: it comes up on its spool
        assert httpx.get(f"{collector.base}/livez", timeout=10).status_code == 200
        assert collector.metric("flywheel_collector_spool_events") == len(first)
        assert collector.metric("flywheel_collector_store_up") == 0
        for key, (headers, body) in second:
            assert httpx.post(collector.base + "/", content=body, headers=headers, timeout=30).status_code == 200
            sent.append(key)
        assert collector.metric("flywheel_collector_spool_events") == len(events)
        cluster.start()
        collector.wait_for_empty_spool()
    finally:
        collector.process.stop(signal.SIGTERM, timeout_s=60)
    xmin = stored(database, "restart")
    assert sorted(xmin) == sorted(sent)
    order = [xmin[key] for key in sent]  # one sender, one at a time: sent order is acknowledged order
    assert order == sorted(order)


@pytest.mark.real("postgresql")
def test_a_full_spool_refuses_instead_of_dropping(cluster, database, tmp_path):
    """A collector that starts while the database is down spools; once its cap is reached it answers 503
    (nothing acknowledged is dropped) and is not ready, so the Service sends to replicas with room."""
    cluster.stop()
    cfg = CollectorConfig(store_url=database, spool_dir=str(tmp_path / "spool"), spool_max_bytes=8000)
    answers = {}
    with TestClient(build_app(cfg)) as client:
        assert client.get("/healthz").json()["store"] == "down"
        for key, (headers, body) in calls("full", 20):
            answers[key] = client.post("/", content=body, headers=headers)
        refused = [key for key, r in answers.items() if r.status_code != 200]
        assert refused and all(answers[key].status_code == 503 for key in refused)
        assert "the spool is full (8000 bytes): not kept" in answers[refused[0]].json()["error"]
        assert list(answers).index(refused[0]) > 0  # it took events before it was full
        ready = client.get("/healthz")
        assert (ready.status_code, ready.json()["status"]) == (503, "spool full")
        assert client.get("/livez").status_code == 200
        spool = client.app.state.spool
        assert 0 < spool.bytes <= spool.max_bytes
        metrics = client.get("/metrics").text
        assert f'flywheel_collector_events_total{{outcome="spool_full",type="{REQUEST_TYPE}"}}' in metrics
        cluster.start()
        deadline = time.monotonic() + 60
        while spool.events or not client.get("/healthz").json()["store"] == "up":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert client.get("/healthz").status_code == 200
    kept = {key for key, r in answers.items() if r.status_code == 200}
    assert set(stored(database, "full")) == kept


def test_the_spool_keeps_order_and_cap_across_reopening(tmp_path):
    t = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    rows = [
        ("inference", {"event_id": f"e{i}", "kind": "request", "event_time": t, "body": "x" * 1000}) for i in range(5)
    ]
    spool = Spool(tmp_path, max_bytes=4500)
    assert spool.append(rows[:3]) == [True, True, True]
    assert spool.append(rows[3:]) == [True, False] and spool.full  # a row that would pass the cap is refused
    with pytest.raises(FlywheelError, match="in use by another collector"):
        Spool(tmp_path, max_bytes=4500)
    spool.remove_through(spool.oldest(1)[0].seq)
    assert not spool.full and spool.events == 3
    spool.close()
    again = Spool(tmp_path, max_bytes=4500)  # as after a restart: what it holds, oldest first, times as they were
    assert (again.events, again.bytes) == (3, spool.bytes)
    assert [s.row for s in again.oldest(10)] == [row for _, row in rows[1:4]]
    assert again.append(rows[4:]) == [True]
    assert [s.row["event_id"] for s in again.oldest(10)] == ["e1", "e2", "e3", "e4"]
    last = again.oldest(10)[-1].seq
    again.remove_through(last)
    assert (again.events, again.bytes) == (0, 0)
    again.append(rows[:1])
    assert again.oldest(1)[0].seq > last  # a key is never handed out twice, even once the spool was empty
    again.close()


def test_texts_no_store_can_hold_are_kept_replaced_or_refused_up_front(tmp_path):
    """PostgreSQL refuses NUL in text, and no store takes a lone surrogate: a raw body keeps its event with
    the NUL replaced (as undecodable bytes are), a body's lone surrogate becomes U+FFFD (test_collector);
    such a text in an event's attributes is a 400 naming the field. So no spooled event is one the store
    refuses later, holding up the events behind it."""
    cfg = CollectorConfig(store_url=f"sqlite:///{tmp_path / 's.db'}", spool_dir=str(tmp_path / "spool"))
    headers, _ = logger_event("request", "nul-1", "")
    structured = {"specversion": "1.0", "id": "nul-2", "source": AGENT_SOURCE, "type": REQUEST_TYPE,
                  "inferenceservicename": "bot\x00", "data": {"instances": ["hi"]}}  # fmt: skip
    lone_attribute = (
        b'{"specversion": "1.0", "id": "lone-1", "source": "a", "type": "%s", "namespace": "ns\\ud800", "data": {}}'
        % REQUEST_TYPE.encode()
    )
    with TestClient(build_app(cfg)) as client:
        kept = client.post("/", content=b"a\x00b", headers={**headers, "content-type": "text/plain"})
        assert kept.status_code == 200
        refused = client.post("/", json=structured, headers={"content-type": "application/cloudevents+json"})
        assert (refused.status_code, refused.json()["error"]) == (400, "inference_service contains a NUL character")
        lone = client.post("/", content=lone_attribute, headers={"content-type": "application/cloudevents+json"})
        assert lone.status_code == 400 and lone.json()["error"].startswith("namespace is not valid Unicode"), lone.text
    engine = sa.create_engine(cfg.store_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT body FROM inference_events")).scalars().all() == ["a\ufffdb"]
    engine.dispose()
