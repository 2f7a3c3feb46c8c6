"""The collector and the conversation store, on SQLite and on a real PostgreSQL; the export as a
conversation snapshot (model/data/conversations.py).

Events are built with the `cloudevents` package exactly as KServe's logger sends them (binary mode).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta, timezone

import httpx
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from cloudevents.conversion import to_structured
from cloudevents.http import CloudEvent
from starlette.testclient import TestClient

from model.collect.collector import build_app
from model.collect.events import FEEDBACK_TYPE, REQUEST_TYPE
from model.collect.export import DIGEST_KEY, export_window
from model.collect.store import GroupCommitWriter, count_rows, open_store
from model.core.config import PROJECT_ROOT, CollectorConfig
from model.core.errors import FlywheelError
from model.data.conversations import SNAPSHOT_SCHEMA, read_snapshot, snapshot_info
from model.deploy.canary_metrics import store_arm_metrics
from model.serve.logger import AGENT_SOURCE_URI
from scripts.cli import main
from tests.helpers.events import T0, VERSION_OF_ARM, arms_folder, feedback_event, inference_event, v1_call


@pytest.fixture
def collector(store_url, tmp_path):
    arms = arms_folder(tmp_path / "arms", VERSION_OF_ARM)
    cfg = CollectorConfig(store_url=store_url, max_body_bytes=4096, arms_dir=str(arms))
    with TestClient(build_app(cfg)) as client:
        yield client, cfg


def post(client, event) -> httpx.Response:
    headers, body = event
    return client.post("/", content=body, headers=headers)


def snapshot(url: str) -> dict:
    engine = open_store(url)
    with engine.connect() as conn:
        out = {
            t: sorted(tuple(map(str, r)) for r in conn.execute(sa.text(f"SELECT * FROM {t}")))
            for t in ("inference_events", "feedback_events")
        }
    engine.dispose()
    return out


def test_request_and_response_join_in_either_order(collector, tmp_path):
    client, cfg = collector
    req_a, resp_a = v1_call("req-a", ["where is my order"], ["order_status"], T0, conversation="conv-1")
    req_b, resp_b = v1_call(
        "req-b",
        ["cancel it", "and refund me"],
        ["cancel_order", "refund_status"],
        T0 + timedelta(seconds=1),
        arm="canary",
    )
    for event in (req_a, resp_a, resp_b, req_b):  # b's response arrives before its request
        resp = post(client, event)
        assert resp.status_code == 200 and resp.json()["stored"] is True
    result = export_window(open_store(cfg.store_url), T0, T0 + timedelta(hours=1), tmp_path / "out.parquet")
    assert result.rows == 3 and result.requests == 2
    rows = {r["request_id"]: r for r in pq.read_table(tmp_path / "out.parquet").to_pylist()}
    assert set(rows) == {"req-a", "req-b/0", "req-b/1"}  # several texts in one request: <ce-id>/<i>
    a = rows["req-a"]
    assert (a["text"], a["predicted_intent"], a["conversation_id"], a["arm"], a["model_version"]) == (
        "where is my order",
        "order_status",
        "conv-1",
        "stable",
        "7",
    )
    assert a["latency_ms"] == pytest.approx(12.0)
    assert a["confidence"] == pytest.approx(0.9) and a["fallback"] is False
    assert [rows[f"req-b/{i}"]["text"] for i in (0, 1)] == ["cancel it", "and refund me"]
    assert [rows[f"req-b/{i}"]["predicted_intent"] for i in (0, 1)] == ["cancel_order", "refund_status"]
    assert rows["req-b/1"]["arm"] == "canary"
    assert rows["req-b/0"]["conversation_id"] == "req-b"  # no conversation header: a conversation of its own


def test_same_event_twice_is_stored_once(collector):
    client, cfg = collector
    req, resp = v1_call("req-dup", ["hello"], ["talk_to_human"], T0)
    first = post(client, req).json()
    again = post(client, req).json()
    assert first == {"id": "req-dup", "stored": True, "duplicate": False}
    assert again == {"id": "req-dup", "stored": False, "duplicate": True}
    assert post(client, resp).json()["stored"] is True  # the response shares the id but is its own event
    fb = feedback_event("fb-1", T0, kind="thumbs_up", request_id="req-dup")
    assert post(client, fb).json()["stored"] is True
    assert post(client, fb).json()["duplicate"] is True
    assert count_rows(open_store(cfg.store_url)) == {"inference": 2, "feedback": 1}
    metrics = client.get("/metrics").text
    assert f'flywheel_collector_events_total{{outcome="duplicate",type="{REQUEST_TYPE}"}} 1.0' in metrics
    assert f'flywheel_collector_events_total{{outcome="stored",type="{FEEDBACK_TYPE}"}} 1.0' in metrics


def test_a_row_the_store_refuses_is_503_and_not_spooled(collector):
    """The store answers but refuses the row (here a constraint): not acknowledged, and not spooled,
    where it would be refused again and hold up every event behind it. The writer carries on."""
    client, cfg = collector
    engine = open_store(cfg.store_url)
    refuse = {
        "sqlite": "CREATE TRIGGER refuse BEFORE INSERT ON feedback_events WHEN NEW.kind = 'resolved'"
        " BEGIN SELECT RAISE(ABORT, 'refused'); END",
        "postgresql": "ALTER TABLE feedback_events ADD CONSTRAINT refuse CHECK (kind <> 'resolved')",
    }[engine.dialect.name]
    with engine.begin() as conn:
        conn.execute(sa.text(refuse))
    engine.dispose()
    resp = post(client, feedback_event("fb-lost", T0, kind="resolved", conversation_id="c"))
    assert resp.status_code == 503 and "store refused the event: IntegrityError" in resp.json()["error"]
    assert client.app.state.spool.events == 0
    req, _ = v1_call("req-after", ["still works"], ["talk_to_human"], T0)
    assert post(client, req).json() == {"id": "req-after", "stored": True, "duplicate": False}
    assert count_rows(open_store(cfg.store_url)) == {"inference": 1, "feedback": 0}
    assert client.get("/healthz").json()["store"] == "up"


def test_export_events_cli(collector, tmp_path, capsys):
    client, cfg = collector
    for event in v1_call("req-cli", ["hello"], ["talk_to_human"], T0):
        post(client, event)
    out = tmp_path / "snap.parquet"
    args = ["export-events", "--store-url", cfg.store_url, "--out", str(out), "--report-dir", str(tmp_path / "r")]
    end = T0 + timedelta(hours=1)
    assert main([*args, "--start", T0.isoformat(), "--end", end.isoformat()]) == 0
    result = json.loads((tmp_path / "r" / "export-events.json").read_text())
    assert result["rows"] == 1 and result["content_digest"] in (tmp_path / "r" / "export-events.md").read_text()
    assert len(read_snapshot(out)) == 1
    assert snapshot_info(out) == {"content_digest": result["content_digest"], "window": result["window"]}
    # the last N days before --end
    assert main([*args, "--days", "0.5", "--end", end.isoformat()]) == 0
    assert (
        json.loads((tmp_path / "r" / "export-events.json").read_text())["window"]["start"]
        == (end - timedelta(hours=12)).isoformat()
    )
    # the window a retrain request names (the newest file of the folder)
    requests = tmp_path / "requests"
    requests.mkdir()
    older = {"window": {"start": "2020-01-01T00:00:00+00:00", "end": "2020-01-02T00:00:00+00:00"}}
    (requests / "20261101-000000.json").write_text(json.dumps(older))
    newest = {"window": {"start": T0.isoformat(), "end": end.isoformat()}}
    (requests / "20261121-000000.json").write_text(json.dumps(newest))
    assert main([*args, "--request", str(requests)]) == 0
    again = json.loads((tmp_path / "r" / "export-events.json").read_text())
    assert again["rows"] == 1 and again["content_digest"] == result["content_digest"]
    capsys.readouterr()
    assert main([*args, "--start", "last tuesday"]) == 2
    assert "ISO 8601" in capsys.readouterr().err
    assert main([*args, "--start", T0.isoformat(), "--days", "7"]) == 2
    assert "exactly one of --start" in capsys.readouterr().err
    assert main([*args, "--request", str(tmp_path)]) == 2
    assert "no retrain request" in capsys.readouterr().err


def test_concurrent_duplicates_are_stored_once(collector):
    client, cfg = collector
    events = [v1_call(f"req-{i % 10}", ["hi"], ["talk_to_human"], T0)[0] for i in range(40)]
    with ThreadPoolExecutor(8) as pool:
        answers = [r.json() for r in pool.map(lambda e: post(client, e), events)]
    assert sum(a["stored"] for a in answers) == 10 and sum(a["duplicate"] for a in answers) == 30
    assert count_rows(open_store(cfg.store_url))["inference"] == 10


def test_group_commit_tells_each_writer_whether_its_row_was_new(store_url):
    """The same event several times in one transaction: only its first copy is new; all are committed on return."""
    engine = open_store(store_url)
    writer = GroupCommitWriter(engine)

    def row(i: int) -> dict:
        return {"event_id": f"gc-{i}", "kind": "request", "event_time": T0, "received_at": T0,
                "source": AGENT_SOURCE_URI, "inference_service": "", "namespace": "", "component": "",
                "endpoint": "default",
                "metadata_json": "{}", "content_type": "application/json", "body": "{}"}  # fmt: skip

    async def write_all():
        try:
            answers = await asyncio.gather(*(writer.write("inference", row(i % 3)) for i in range(9)))
            return answers, count_rows(engine)["inference"]  # read as the last caller is answered
        finally:
            writer.close()

    answers, stored = asyncio.run(write_all())
    engine.dispose()
    assert answers == [True] * 3 + [False] * 6 and stored == 3


def test_feedback_is_folded_into_the_answer_it_follows(collector, tmp_path):
    """Thumbs name a request (the latest verdict counts); conversation feedback goes to the last answer before it."""
    client, cfg = collector
    minute = timedelta(minutes=1)
    events = [
        *v1_call("req-f", ["my parcel is late"], ["order_status"], T0, conversation="conv-9"),
        *v1_call("req-f2", ["still nothing"], ["order_status"], T0 + 5 * minute, conversation="conv-9"),
        *v1_call("req-g", ["thanks"], ["talk_to_human"], T0, conversation="conv-other"),
        *v1_call("req-m", ["hi", "bye"], ["greeting", "goodbye"], T0),
        feedback_event("fb-a", T0 + minute, kind="thumbs_up", request_id="req-f"),
        feedback_event("fb-b", T0 + 2 * minute, kind="thumbs_down", request_id="req-f"),  # changed their mind
        feedback_event("fb-c", T0 + 3 * minute, kind="escalated", conversation_id="conv-9"),  # after req-f only
        feedback_event("fb-d", T0 + 9 * minute, kind="abandoned", conversation_id="conv-9"),  # after req-f2
        feedback_event("fb-e", T0 + minute, kind="thumbs_up", request_id="req-m/1"),  # one text of a request
        feedback_event("fb-f", T0 + minute, kind="resolved", request_id="req-m"),  # every text of it
        feedback_event("fb-g", T0 + minute, kind="thumbs_up", request_id="req-elsewhere"),
    ]
    for event in events:
        assert post(client, event).status_code == 200
    result = export_window(open_store(cfg.store_url), T0, T0 + timedelta(hours=1), tmp_path / "f.parquet")
    rows = read_snapshot(tmp_path / "f.parquet").set_index("request_id")
    flags = ["thumbs", "abandoned", "escalated", "resolved"]
    assert rows.loc["req-f", flags].tolist() == ["down", False, True, False]
    assert rows.loc["req-f2", flags].tolist() == ["", True, False, False]
    assert rows.loc["req-g", flags].tolist() == ["", False, False, False]
    assert rows.loc["req-m/0", flags].tolist() == ["", False, False, True]
    assert rows.loc["req-m/1", flags].tolist() == ["up", False, False, True]
    assert result.rated == 2 and result.with_feedback == 4
    assert result.skipped == {}  # fb-g names a request no export reads: never fetched


def test_only_answered_requests_become_rows(collector, tmp_path):
    client, cfg = collector
    req_only, _ = v1_call("req-failed", ["no answer came"], ["x"], T0)
    _, resp_only = v1_call("req-orphan", ["request lost"], ["x"], T0)
    req_ok, resp_ok = v1_call("req-ok", ["answered"], ["order_status"], T0)
    thumbs = feedback_event("fb-failed", T0 + timedelta(minutes=1), kind="thumbs_down", request_id="req-failed")
    for event in (req_only, resp_only, req_ok, resp_ok, thumbs):
        assert post(client, event).status_code == 200
    result = export_window(open_store(cfg.store_url), T0, T0 + timedelta(hours=1), tmp_path / "a.parquet")
    assert read_snapshot(tmp_path / "a.parquet")["request_id"].tolist() == ["req-ok"]
    assert result.requests == 3
    assert result.skipped == {"feedback_without_answer": 1, "no_request": 1, "no_response": 1}


def test_v2_bodies_are_understood(collector, tmp_path):
    client, cfg = collector
    req = inference_event(
        "request",
        "req-v2",
        {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["reset my password"]}]},
        T0,
    )
    resp = inference_event(
        "response",
        "req-v2",
        {
            "id": "req-v2",
            "model_name": "m",
            "model_version": "3",
            "outputs": [
                {"name": "intent", "shape": [1], "datatype": "BYTES", "data": ["reset_password"]},
                {"name": "confidence", "shape": [1], "datatype": "FP32", "data": [0.42]},
                {"name": "fallback", "shape": [1], "datatype": "BOOL", "data": [True]},
            ],
            "parameters": {"model_version": "3"},
        },
        T0 + timedelta(milliseconds=5),
    )
    assert post(client, req).status_code == 200 and post(client, resp).status_code == 200
    export_window(open_store(cfg.store_url), T0, T0 + timedelta(hours=1), tmp_path / "v2.parquet")
    (row,) = pq.read_table(tmp_path / "v2.parquet").to_pylist()
    assert (row["text"], row["predicted_intent"], row["fallback"], row["model_version"]) == (
        "reset my password",
        "reset_password",
        True,
        "3",
    )
    assert row["confidence"] == pytest.approx(0.42)


# KServe's logger forwards the client's own Content-Type with both events, and never retries a refusal
CLIENT_CONTENT_TYPES = ["application/json", "text/plain", "application/x-www-form-urlencoded", None]


@pytest.mark.parametrize("content_type", CLIENT_CONTENT_TYPES, ids=[str(c) for c in CLIENT_CONTENT_TYPES])
def test_any_content_type_is_stored_and_a_json_body_read_as_json(collector, tmp_path, content_type):
    """`curl -d '{"instances": [...]}'` sends form-encoded JSON: the events are kept and exported as any other."""
    client, cfg = collector
    req, resp = v1_call("req-ct", ["where is my parcel"], ["order_status"], T0, arm="canary")
    for headers, body in (req, resp):
        headers = {k: v for k, v in headers.items() if k != "content-type"}
        if content_type:
            headers["content-type"] = content_type
        answer = client.post("/events", content=body, headers=headers)
        assert answer.status_code == 200 and answer.json()["stored"] is True, answer.text
    result = export_window(open_store(cfg.store_url), T0, T0 + timedelta(hours=1), tmp_path / "ct.parquet")
    (row,) = read_snapshot(tmp_path / "ct.parquet").to_dict("records")
    assert result.rows == 1 and (row["text"], row["arm"], row["model_version"]) == (
        "where is my parcel",
        "canary",
        "8",
    )


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_body_that_is_not_json_is_kept_as_redacted_raw_text(collector, content_type):
    client, cfg = collector
    body = "text=my email is jane.doe@example.com, order 123456789&lang=en"
    headers, data = inference_event("request", "req-raw", body, T0, content_type=content_type)
    answer = client.post("/events", content=data, headers=headers)
    assert answer.status_code == 200 and answer.json()["stored"] is True, answer.text
    engine = open_store(cfg.store_url)
    with engine.connect() as conn:
        (row,) = conn.execute(sa.text("SELECT body, body_is_json, content_type FROM inference_events")).all()
    assert row.body_is_json in (False, 0) and row.content_type == (content_type or "")
    assert "jane.doe@example.com" not in row.body and "order 123456789" in row.body and row.body.startswith("text=")
    headers, data = inference_event("request", "req-bytes", "x", T0)
    answer = client.post("/events", content=b"\xff\xfe not utf-8", headers=headers)
    assert answer.status_code == 200  # kept (undecodable bytes replaced), never refused


def test_structured_mode_is_accepted(collector):
    client, cfg = collector
    event = CloudEvent(
        {"type": FEEDBACK_TYPE, "source": "chat", "id": "fb-structured"}, {"kind": "resolved", "conversation_id": "c"}
    )
    headers, body = to_structured(event)
    assert client.post("/events", content=body, headers=headers).json()["stored"] is True


def _bad(headers_patch: dict | None = None, body: bytes | None = None, drop: str = ""):
    headers, data = v1_call("req-bad", ["hi"], ["talk_to_human"], T0)[0]
    headers = {k: v for k, v in headers.items() if k != drop}
    headers.update(headers_patch or {})
    return headers, data if body is None else body


BAD_EVENTS = [
    ("unknown event type", _bad({"ce-type": "com.example.other"}), 400, "unknown event type"),
    ("missing ce-id", _bad(drop="ce-id"), 400, "ce-id"),
    ("missing ce-source", _bad(drop="ce-source"), 400, "source"),
    ("empty ce-id", _bad({"ce-id": ""}), 400, "ce-id"),
    ("over-long ce-id", _bad({"ce-id": "x" * 201}), 400, "201 characters"),
    (
        "feedback not JSON",
        (feedback_event("fb-j", T0, kind="x")[0], b"kind=thumbs_up"),
        400,
        "feedback body is not JSON",
    ),
    ("bad ce-time", _bad({"ce-time": "yesterday"}), 400, "RFC 3339"),
    ("bad ce-metadata", _bad({"ce-metadata": "[1]"}), 400, "ce-metadata"),
    ("over-size body", _bad(body=json.dumps({"instances": ["x" * 5000]}).encode()), 413, "too large"),
    ("feedback unknown kind", feedback_event("fb-x", T0, kind="meh", request_id="r"), 400, "feedback kind 'meh'"),
    ("feedback names nothing", feedback_event("fb-y", T0, kind="thumbs_up"), 400, "request_id or a conversation_id"),
    (
        "feedback id not text",
        feedback_event("fb-z", T0, kind="thumbs_up", request_id=5),
        400,
        "request_id must be a string",
    ),
    ("feedback id with NUL", feedback_event("fb-n", T0, kind="resolved", request_id="a\x00b"), 400, "NUL character"),
    ("feedback not an object", (feedback_event("fb-w", T0, kind="x")[0], b"[1, 2]"), 400, "must be a JSON object"),
]


@pytest.mark.parametrize(("what", "event", "status", "fragment"), BAD_EVENTS, ids=[b[0] for b in BAD_EVENTS])
def test_bad_input_gets_4xx_and_touches_nothing(collector, what, event, status, fragment):
    client, cfg = collector
    for good in v1_call("req-bad", ["stored before"], ["talk_to_human"], T0):  # same id as the bad one
        assert post(client, good).status_code == 200
    before = snapshot(cfg.store_url)
    resp = post(client, event)
    assert resp.status_code == status, resp.text
    assert fragment in resp.json()["error"]
    assert snapshot(cfg.store_url) == before


def test_export_window_digest_and_schema(collector, tmp_path):
    client, cfg = collector
    for i, offset in enumerate((-10, 0, 30, 59, 60, 90)):  # minutes from T0; the window is [T0, T0+60min)
        for event in v1_call(f"req-{i}", [f"text {i}"], ["order_status"], T0 + timedelta(minutes=offset)):
            assert post(client, event).status_code == 200
    engine = open_store(cfg.store_url)
    first = export_window(engine, T0, T0 + timedelta(minutes=60), tmp_path / "a.parquet")
    again = export_window(engine, T0, T0 + timedelta(minutes=60), tmp_path / "b.parquet")
    table = pq.read_table(tmp_path / "a.parquet")
    assert sorted(table.column("request_id").to_pylist()) == ["req-1", "req-2", "req-3"]
    assert table.schema.remove_metadata() == SNAPSHOT_SCHEMA
    assert table.schema.metadata[DIGEST_KEY].decode() == first.content_digest == again.content_digest
    post(client, feedback_event("fb-late", T0 + timedelta(hours=5), kind="thumbs_up", request_id="req-2"))
    changed = export_window(engine, T0, T0 + timedelta(minutes=60), tmp_path / "c.parquet")
    assert changed.content_digest != first.content_digest and changed.rows == first.rows
    empty = export_window(engine, T0 + timedelta(days=3), T0 + timedelta(days=4), tmp_path / "empty.parquet")
    assert empty.rows == 0 and pq.read_table(tmp_path / "empty.parquet").schema.remove_metadata() == SNAPSHOT_SCHEMA


def test_bad_store_url_is_a_clear_error():
    with pytest.raises(FlywheelError, match="only sqlite and postgresql"):
        open_store("mysql://localhost/x")
    with pytest.raises(FlywheelError, match="not a SQLAlchemy URL"):
        open_store("not a url")
    with pytest.raises(FlywheelError, match="expected one of FULL, NORMAL"):
        open_store("sqlite://", sqlite_synchronous="OFF")


def test_sqlite_store_is_wal_with_fsync_on_commit(tmp_path):
    engine = open_store(f"sqlite:///{tmp_path / 's.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


KILL_AFTER_ACKED = 100
SENT = 2000  # far more than can be acknowledged between the 100th and the kill


def test_acknowledged_events_survive_sigkill(tmp_path):
    """`flywheel collect` on loopback: every event answered 200 is in the store after a SIGKILL."""
    port, db = _free_port(), tmp_path / "store.db"
    env = {**os.environ, "FLYWHEEL_WORK_DIR": str(tmp_path / "work")}
    log = open(tmp_path / "collector.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "scripts.cli", "collect", "--http_port", str(port), "--store_url", f"sqlite:///{db}"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        acked: list[str] = []
        lock, enough_acked, killed = threading.Lock(), threading.Event(), threading.Event()

        def send(i: int):
            if killed.is_set():
                return  # nothing listens any more
            headers, body = inference_event("request", f"kill-{i}", {"instances": [f"text {i}"]}, T0)
            try:
                r = httpx.post(base, content=body, headers=headers, timeout=30)
            except httpx.HTTPError:
                return
            if r.status_code == 200:
                with lock:
                    acked.append(f"kill-{i}")
                    if len(acked) >= KILL_AFTER_ACKED:
                        enough_acked.set()

        # the kill comes once KILL_AFTER_ACKED events are acknowledged, with up to 8 more in flight,
        # however fast or slow this machine is: a fixed sleep would kill before the first or after the last
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(send, i) for i in range(SENT)]
            assert enough_acked.wait(120), (tmp_path / "collector.log").read_text()
            proc.send_signal(signal.SIGKILL)
            killed.set()
            for f in futures:
                f.result()
    finally:
        proc.kill()
        proc.wait()
    assert KILL_AFTER_ACKED <= len(acked) < SENT  # killed mid-run: later events were refused, not acknowledged
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        stored = {r[0] for r in conn.execute(sa.text("SELECT event_id FROM inference_events"))}
    assert set(acked) <= stored


def test_taken_port_is_a_clear_error(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["collect", "--http_port", str(port), "--store_url", f"sqlite:///{tmp_path / 's.db'}"])
    assert code == 2
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in capsys.readouterr().err
    assert not (tmp_path / "s.db").exists()  # nothing opened before the check


def test_times_with_an_offset_land_in_the_right_utc_window(collector, tmp_path):
    client, cfg = collector
    plus_two = timezone(timedelta(hours=2))
    for event in v1_call("req-tz", ["hallo"], ["talk_to_human"], T0.astimezone(plus_two)):  # same instant as T0
        assert post(client, event).status_code == 200
    engine = open_store(cfg.store_url)
    inside = export_window(engine, T0 - timedelta(minutes=1), T0 + timedelta(minutes=1), tmp_path / "in.parquet")
    assert inside.rows == 1
    (row,) = pq.read_table(tmp_path / "in.parquet").to_pylist()
    assert row["timestamp"] == T0 and row["latency_ms"] == pytest.approx(12.0)
    window_in_plus_two = (T0 + timedelta(minutes=1)).astimezone(plus_two)
    assert export_window(engine, T0.astimezone(plus_two), window_in_plus_two, tmp_path / "b.parquet").rows == 1
    assert export_window(engine, T0 + timedelta(minutes=30), T0 + timedelta(hours=3), tmp_path / "o.parquet").rows == 0


PII_TEXT = "I am jane.doe@example.com, card 4111 1111 1111 1111, call me on +44 7911 123456"
PII_RAW = ("jane.doe@example.com", "4111 1111 1111 1111", "+44 7911 123456", "7911 123456")
PII_REDACTED = "I am <EMAIL>, card <CARD>, call me on <PHONE>"


def test_personal_data_is_redacted_before_it_reaches_the_store(collector, tmp_path):
    """Request texts (V1 strings and objects, V2 tensors) and feedback comments are stored redacted."""
    client, cfg = collector
    v1_req, v1_resp = v1_call("req-pii", [PII_TEXT], ["update_card"], T0, conversation="conv-pii")
    v1_objects = inference_event("request", "req-pii-obj", {"instances": [{"text": PII_TEXT}]}, T0)
    v2_body = {"id": "req-pii-v2", "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [PII_TEXT]}]}
    v2_req = inference_event("request", "req-pii-v2", v2_body, T0)
    comment = feedback_event(
        "fb-pii", T0 + timedelta(minutes=1), kind="thumbs_down", request_id="req-pii", comment=f"no! {PII_TEXT}"
    )
    for event in (v1_req, v1_resp, v1_objects, v2_req, comment):
        assert post(client, event).status_code == 200
    engine = open_store(cfg.store_url)
    with engine.connect() as conn:  # straight from the database, as anyone with access to it would read it
        bodies = dict(conn.execute(sa.text("SELECT event_id, body FROM inference_events WHERE kind = 'request'")).all())
        (stored_comment,) = conn.execute(sa.text("SELECT comment FROM feedback_events")).scalars()
    everything = " ".join([*bodies.values(), stored_comment])
    assert not [raw for raw in PII_RAW if raw in everything]
    assert json.loads(bodies["req-pii"]) == {"instances": [PII_REDACTED]}
    assert json.loads(bodies["req-pii-obj"]) == {"instances": [{"text": PII_REDACTED}]}
    assert json.loads(bodies["req-pii-v2"]) == {**v2_body, "inputs": [{**v2_body["inputs"][0], "data": [PII_REDACTED]}]}
    assert stored_comment == f"no! {PII_REDACTED}"
    export_window(engine, T0, T0 + timedelta(hours=1), tmp_path / "pii.parquet")
    (row,) = read_snapshot(tmp_path / "pii.parquet").to_dict("records")
    assert (row["request_id"], row["text"], row["thumbs"]) == ("req-pii", PII_REDACTED, "down")
    engine.dispose()


def test_texts_without_personal_data_are_stored_as_sent(collector):
    client, cfg = collector
    req, _ = v1_call("req-plain", ["where is my order"], ["order_status"], T0)
    assert post(client, req).status_code == 200
    engine = open_store(cfg.store_url)
    with engine.connect() as conn:
        (body,) = conn.execute(sa.text("SELECT body FROM inference_events")).scalars()
    assert body == req[1].decode()  # untouched, byte for byte
    engine.dispose()


def test_a_lone_surrogate_in_a_logged_text_is_stored_marked_not_refused(collector, tmp_path):
    """KServe's logger forwards the client's bytes: a V2 request whose text holds the JSON escape \\ud800 (the
    predictor answers it 400) reaches the collector as it was sent. No store can encode a lone surrogate; the
    collector stores the call with U+FFFD in its place, as for bytes that are not UTF-8, and redacts the rest."""
    client, cfg = collector
    body = rb'{"inputs":[{"name":"text","shape":[1],"datatype":"BYTES","data":["mail jane.doe@example.com \ud800"]}]}'
    headers, _ = inference_event("request", "req-lone", "{}", T0)
    assert client.post("/", content=body, headers=headers).status_code == 200
    pair = {"instances": ["thanks \U0001f600"]}  # a well-formed pair (json.dumps writes \ud83d\ude00): kept as sent
    assert post(client, inference_event("request", "req-pair", pair, T0)).status_code == 200
    comment = rb'{"kind": "thumbs_down", "request_id": "req-lone", "comment": "\udfff broken"}'
    headers, _ = feedback_event("fb-lone", T0, kind="thumbs_down", request_id="req-lone")
    assert client.post("/", content=comment, headers=headers).status_code == 200
    engine = open_store(cfg.store_url)
    with engine.connect() as conn:
        bodies = dict(conn.execute(sa.text("SELECT event_id, body FROM inference_events")).all())
        (stored_comment,) = conn.execute(sa.text("SELECT comment FROM feedback_events")).scalars()
    engine.dispose()
    assert json.loads(bodies["req-lone"])["inputs"][0]["data"] == ["mail <EMAIL> \ufffd"]
    assert bodies["req-pair"] == json.dumps(pair) and json.loads(bodies["req-pair"]) == pair
    assert stored_comment == "\ufffd broken"


def test_feedback_is_counted_for_the_arm_and_version_that_answered(collector):
    """`flywheel_feedback_total{kind, arm, model_version}` is what the alert rules and canary analysis query."""
    client, cfg = collector
    for event in v1_call("req-rated", ["hi"], ["talk_to_human"], T0, arm="canary"):
        assert post(client, event).status_code == 200
    for event in (
        feedback_event("fb-r1", T0, kind="thumbs_down", request_id="req-rated"),
        feedback_event("fb-r1", T0, kind="thumbs_down", request_id="req-rated"),  # redelivered: counted once
        feedback_event("fb-r2", T0, kind="escalated", conversation_id="conv-x"),  # names no answer
    ):
        assert post(client, event).status_code == 200
    metrics = client.get("/metrics").text
    assert 'flywheel_feedback_total{arm="canary",kind="thumbs_down",model_version="8"} 1.0' in metrics
    assert 'flywheel_feedback_total{arm="unknown",kind="escalated",model_version="unknown"} 1.0' in metrics


def test_feedback_before_its_answer_is_counted_once_the_answer_is_stored(collector):
    """KServe's logger posts after answering, without waiting: a quick user's rating may come first."""
    client, cfg = collector

    def counted(arm: str, kind: str, version: str) -> float:
        prefix = f'flywheel_feedback_total{{arm="{arm}",kind="{kind}",model_version="{version}"}} '
        lines = [line for line in client.get("/metrics").text.splitlines() if line.startswith(prefix)]
        return float(lines[0][len(prefix) :]) if lines else 0.0

    assert post(client, feedback_event("fb-early", T0, kind="thumbs_up", request_id="req-late")).status_code == 200
    assert post(client, feedback_event("fb-never", T0, kind="abandoned", request_id="req-never")).status_code == 200
    for event in v1_call("req-late", ["hi"], ["talk_to_human"], T0, arm="canary"):
        assert post(client, event).status_code == 200
    deadline = time.time() + 15
    while time.time() < deadline and not counted("unknown", "abandoned", "unknown"):
        time.sleep(0.2)
    assert counted("canary", "thumbs_up", "8") == 1.0
    assert counted("unknown", "thumbs_up", "unknown") == 0.0  # not counted twice, nor as unknown
    assert counted("unknown", "abandoned", "unknown") == 1.0  # its answer never came


def test_arms_follow_the_mounted_configmap_without_a_restart(collector, tmp_path):
    """A release rewrites the ConfigMap; the kubelet swaps the mounted files; the next answer is attributed anew."""
    client, cfg = collector
    arms = tmp_path / "arms"
    (arms / "canary").unlink()  # before the release: only stable (7) serves
    for event in v1_call("before", ["hi"], ["talk_to_human"], T0, arm="canary"):  # an answer from version 8
        assert post(client, event).status_code == 200
    metrics = client.get("/metrics").text
    assert 'flywheel_arm_info{arm="stable",model_version="7"} 1.0' in metrics and 'arm="canary"' not in metrics
    tmp = arms / ".canary.new"
    tmp.write_text("8")
    tmp.replace(arms / "canary")  # as the kubelet's atomic writer: the file is replaced, not edited
    for event in v1_call("after", ["hi"], ["talk_to_human"], T0 + timedelta(seconds=1), arm="canary"):
        assert post(client, event).status_code == 200
    engine = open_store(cfg.store_url)
    with engine.connect() as conn:
        arm_of = dict(conn.execute(sa.text("SELECT event_id, arm FROM inference_events WHERE kind = 'response'")).all())
    assert arm_of == {"before": "unknown", "after": "canary"}
    assert 'flywheel_arm_info{arm="canary",model_version="8"} 1.0' in client.get("/metrics").text


def test_a_call_without_an_answer_is_arm_unknown_not_the_last_answering_version(collector):
    """Every revision sends ce-source http://localhost:9081/ (kserve cmd/agent/main.go) and a failed call has no
    response event: its request is arm unknown, never charged to the version that answered last."""
    client, cfg = collector
    for i in range(3):
        for event in v1_call(f"ok-{i}", ["hi"], ["talk_to_human"], T0 + timedelta(seconds=i), arm="canary"):
            assert post(client, event).status_code == 200
    for event in v1_call("ok-stable", ["hi"], ["talk_to_human"], T0, arm="stable"):
        assert post(client, event).status_code == 200
    # the canary answered last on the one source there is; this call then failed (no 200, no response event)
    failed = inference_event("request", "failed-1", {"instances": ["boom"]}, T0 + timedelta(seconds=5))
    assert failed[0]["ce-source"] == AGENT_SOURCE_URI and post(client, failed).status_code == 200
    engine = open_store(cfg.store_url)
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT event_id, kind, arm, source FROM inference_events")).all()
    engine.dispose()
    arm_of = {(event_id, kind): arm for event_id, kind, arm, _ in stored}
    assert {source for *_, source in stored} == {AGENT_SOURCE_URI}  # nothing in the source tells revisions apart
    assert arm_of["failed-1", "request"] == "unknown"
    assert arm_of["ok-2", "response"] == "canary" and arm_of["ok-stable", "response"] == "stable"
    arms = store_arm_metrics(cfg.store_url, VERSION_OF_ARM, T0, T0 + timedelta(hours=1), 1000.0)
    assert (arms["canary"].requests, arms["canary"].errors) == (3, 0)
    assert (arms["stable"].requests, arms["stable"].errors) == (1, 0)
    assert (arms["unknown"].requests, arms["unknown"].errors, arms["unknown"].model_version) == (1, 1, None)
