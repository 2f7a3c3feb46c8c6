"""Entities through serving, logging and the collector: the V1 and V2 answers carry them, the prediction
log keeps them, the stand-in for KServe's logger sends them as the client got them, and the collector
stores and exports them on the redacted text, never as personal data.

The chain tests run the real predictor steps (``preprocess``, ``predict``, ``postprocess``) with a
hand-made predictor, take the CloudEvents the logger stand-in would post, and post them to the real
collector; others post events built with the ``cloudevents`` package exactly as KServe's logger does.
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta, timezone

import pandas as pd
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from starlette.testclient import TestClient

from data_checks.pii import Finding, redact, redacted_span
from model.artifact.predictor import Entity, Prediction
from model.collect.collector import build_app
from model.collect.export import export_window
from model.collect.store import open_store
from model.core.config import CollectorConfig, ServeConfig
from model.core.kserve_sdk import InferRequest, kserve
from model.data.conversations import read_snapshot, write_snapshot
from model.serve import predictor as serve_predictor
from model.serve.catalog import ResponseCatalog
from model.serve.logger import LocalLogger, cloudevents_time
from model.serve.metrics import ServingMetrics
from model.serve.prediction_log import MIN_CAP_BYTES, PredictionLog
from model.serve.protocol import Endpoint, ParsedRequest, v1_response, v2_response
from tests.helpers.events import T0, VERSION_OF_ARM, arms_folder, inference_event
from tests.helpers.serving import read_prediction_log
from tests.helpers.snapshots import event

EMAIL, PHONE, ORDER = "jane.doe@example.com", "+44 7911 123456", "12345"
# an e-mail before the order number (the offsets move) and a phone number the model tags too (dropped)
PII_TEXT = f"I am {EMAIL}, call me on {PHONE} about order {ORDER} please"
PLAIN_TEXT = f"where is order {ORDER}"
NAME = "flywheel-intent"


def raw_entities(text: str) -> tuple[Entity, ...]:
    """What an entity model would tag: the order number, and a phone number where there is one."""
    found = [Entity("order_id", m.group(), m.start(), m.end(), 0.97) for m in re.finditer(r"\b\d{5}\b", text)]
    if PHONE in text:
        at = text.index(PHONE)
        found.append(Entity("phone", PHONE, at, at + len(PHONE), 0.88))
    return tuple(sorted(found, key=lambda e: e.start))


class FakePredictor:
    """What ``IntentModel`` needs of an ``IntentPredictor``; ``with_entities=False`` is an intent-only model."""

    labels = ["order_status"]
    digest = "0" * 64
    runtime = "onnx-int8"

    def __init__(self, with_entities: bool):
        self.with_entities = with_entities

    def predict(self, texts: list[str]) -> list[Prediction]:
        return [Prediction("order_status", 0.9, False, raw_entities(t) if self.with_entities else ()) for t in texts]


class CapturingLogger(LocalLogger):
    """The logger stand-in with its HTTP worker replaced by a list: what it would post, byte for byte."""

    def __init__(self):
        super().__init__("http://collector.invalid/", NAME, registry=CollectorRegistry())
        self.sent: list[tuple[dict, bytes]] = []

    async def _send(self, client, headers: dict[str, str], body: bytes) -> None:
        self.sent.append((headers, body))


def serve_calls(tmp_path, monkeypatch, with_entities: bool, calls: list[tuple[object, dict]]):
    """Each (payload, headers) through the predictor's steps: the client's answers, the logger's events,
    the prediction log's records."""
    monkeypatch.setattr(serve_predictor, "open_artifact", lambda *_: FakePredictor(with_entities))
    catalog = ResponseCatalog({"order_status": "Let me look that up."}, "A colleague will help you.")
    log = PredictionLog(tmp_path / "predictions.jsonl", MIN_CAP_BYTES)
    source = serve_predictor.ModelSource("unused", VERSION_OF_ARM["stable"])
    model = serve_predictor.IntentModel(
        NAME, "stable", source, cfg=ServeConfig(), catalog=catalog, metrics=ServingMetrics(CollectorRegistry()), log=log
    )
    model.load()
    model.logger = CapturingLogger()

    async def run():
        answers = []
        for payload, headers in calls:
            request = await model.preprocess(payload, headers)
            answer = await model.postprocess(await model.predict(request))
            answers.append(answer if isinstance(answer, dict) else answer.to_rest()[0])  # what the client reads
        while not model.logger._queue.empty():  # the logger's worker takes every queued event
            await asyncio.sleep(0.01)
        return answers

    try:
        answers = asyncio.run(run())
    finally:
        model.stop()
        log.close()
    records = read_prediction_log(tmp_path / "predictions.jsonl")
    return answers, model.logger.sent, records


def v2_payload(request_id: str, texts: list[str]) -> InferRequest:
    return InferRequest(NAME, [kserve.InferInput("text", [len(texts)], "BYTES", data=texts)], request_id=request_id)


V1_CALL = ({"instances": [PII_TEXT]}, {"ce-id": "call-v1", "content-type": "application/json"})
V2_CALL = (v2_payload("call-v2", [PII_TEXT, PLAIN_TEXT]), {"content-type": "application/json"})


def collect_and_export(tmp_path, events: list[tuple[dict, bytes]]) -> tuple[dict, dict, list[dict]]:
    """Post the events to a collector on a SQLite store; the export's result, rows by request id, stored rows."""
    store = f"sqlite:///{tmp_path / 'conversations.db'}"
    cfg = CollectorConfig(store_url=store, arms_dir=str(arms_folder(tmp_path / "arms", VERSION_OF_ARM)))
    with TestClient(build_app(cfg)) as client:
        for headers, body in events:
            answered = client.post("/", content=body, headers=headers)
            assert answered.status_code == 200 and answered.json()["stored"], answered.text
    engine = open_store(store)
    now = datetime.now(UTC)
    result = export_window(engine, min(now, T0) - timedelta(hours=1), now + timedelta(hours=1), tmp_path / "s.parquet")
    with engine.connect() as conn:
        stored = [dict(r._mapping) for r in conn.execute(sa.text("SELECT * FROM inference_events"))]
    engine.dispose()
    rows = {r["request_id"]: r for r in read_snapshot(tmp_path / "s.parquet").to_dict("records")}
    return result, rows, stored


def stored_entity_keys(body: dict) -> list[list[str]]:
    """The keys of each entity a stored V1 or V2 response body holds."""
    if "predictions" in body:
        return [list(e) for p in body["predictions"] for e in p["entities"]]
    (output,) = [o for o in body["outputs"] if o["name"] == "entities"]
    return [list(e) for element in output["data"] for e in json.loads(element)]


def expected_order_entity(raw_text: str) -> dict:
    """The order number where it lands in the redacted text, computed independently of the offset map."""
    redacted = redact(raw_text)[0]
    start = redacted.index(ORDER)
    return {"start": start, "end": start + len(ORDER), "type": "order_id", "value": ORDER, "confidence": 0.97}


def test_answers_carry_entities_v1_and_v2(tmp_path, monkeypatch):
    (v1, v2), _, _ = serve_calls(tmp_path, monkeypatch, True, [V1_CALL, V2_CALL])
    (pred,) = v1["predictions"]
    assert pred["entities"] == [e.to_dict() for e in raw_entities(PII_TEXT)]
    for e in pred["entities"]:  # offsets into the text the client sent
        assert PII_TEXT[e["start"] : e["end"]] == e["text"]
    outputs = {o["name"]: o for o in v2["outputs"]}
    assert [o["name"] for o in v2["outputs"]] == ["intent", "confidence", "fallback", "reply", "entities"]
    assert (outputs["entities"]["datatype"], outputs["entities"]["shape"]) == ("BYTES", [2])
    assert [json.loads(d) for d in outputs["entities"]["data"]] == [
        [e.to_dict() for e in raw_entities(t)] for t in (PII_TEXT, PLAIN_TEXT)
    ]


def test_a_model_without_entities_answers_as_before_with_empty_lists(tmp_path, monkeypatch):
    (v1, v2), _, records = serve_calls(tmp_path, monkeypatch, False, [V1_CALL, V2_CALL])
    (pred,) = v1["predictions"]
    assert pred == {
        "intent": "order_status",
        "confidence": 0.9,
        "fallback": False,
        "reply": "Let me look that up.",
        "entities": [],
        "model_version": VERSION_OF_ARM["stable"],
        "request_id": "call-v1",
    }
    outputs = {o["name"]: o["data"] for o in v2["outputs"]}
    assert outputs["entities"] == ["[]", "[]"] and outputs["intent"] == ["order_status"] * 2
    assert [r["entities"] for r in records] == [[], [], []]


def test_the_prediction_log_keeps_entities_without_the_users_characters(tmp_path, monkeypatch):
    _, _, records = serve_calls(tmp_path, monkeypatch, True, [V1_CALL])
    (record,) = records
    expected = [{k: v for k, v in e.to_dict().items() if k != "text"} for e in raw_entities(PII_TEXT)]
    assert record["entities"] == expected and len(expected) == 2
    assert PHONE not in json.dumps(record) and all("text" not in e for e in record["entities"])


UPSTREAM_ATTRIBUTES = {  # kserve pkg/logger/worker.go, sendHttpCloudEvent (at aaac4e294dae), no annotations
    "ce-specversion", "ce-id", "ce-type", "ce-source", "ce-time", "ce-recordedtime", "ce-inferenceservicename",
    "ce-namespace", "ce-component", "ce-endpoint", "ce-metadata", "content-type",
}  # fmt: skip
GO_SDK_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{0,8}[1-9])?Z")  # RFC3339Nano, in UTC


def test_the_logger_stand_in_sends_the_attributes_kserves_agent_sends(tmp_path, monkeypatch):
    """The agent's fallback source (cmd/agent/main.go: no pod name reaches the webhook), ce-time the call's own
    moment (the request's arrival, the answer's completion) and ce-recordedtime the send time, as the CloudEvents
    Go SDK writes times; nothing else."""
    before = datetime.now(UTC)
    _, sent, _ = serve_calls(tmp_path, monkeypatch, False, [V1_CALL])
    after = datetime.now(UTC)
    (request, _), (response, _) = sent
    assert (request["ce-type"], response["ce-type"]) == (
        "org.kubeflow.serving.inference.request",
        "org.kubeflow.serving.inference.response",
    )
    times = {}
    for kind, headers in (("request", request), ("response", response)):
        assert set(headers) == UPSTREAM_ATTRIBUTES
        assert headers["ce-source"] == "http://localhost:9081/" and headers["ce-endpoint"] == ""
        for name in ("ce-time", "ce-recordedtime"):
            assert GO_SDK_TIME.fullmatch(headers[name]), headers[name]
            times[kind, name] = datetime.fromisoformat(headers[name])
    assert before <= times["request", "ce-time"] <= times["response", "ce-time"] <= after
    for kind in ("request", "response"):  # recorded as sent, after the moment it records
        assert times[kind, "ce-time"] <= times[kind, "ce-recordedtime"] <= after


@pytest.mark.parametrize(
    ("moment", "written"),
    [
        (datetime(2021, 4, 10, 0, 23, 26, 78952, tzinfo=UTC), "2021-04-10T00:23:26.078952Z"),
        (datetime(2021, 4, 10, 0, 23, 26, 80000, tzinfo=UTC), "2021-04-10T00:23:26.08Z"),  # no trailing zeros
        (datetime(2021, 4, 10, 0, 23, 26, tzinfo=UTC), "2021-04-10T00:23:26Z"),  # no fraction at all
        (datetime(2021, 4, 10, 2, 23, 26, 500000, tzinfo=timezone(timedelta(hours=2))), "2021-04-10T00:23:26.5Z"),
    ],
)
def test_times_are_written_as_the_cloudevents_go_sdk_writes_them(moment, written):
    """sdk-go v2/types/value.go FormatTime: ``v.UTC().Format(time.RFC3339Nano)``."""
    assert cloudevents_time(moment) == written


def test_the_logger_stand_in_sends_entities_exactly_as_the_client_got_them(tmp_path, monkeypatch):
    answers, sent, _ = serve_calls(tmp_path, monkeypatch, True, [V1_CALL, V2_CALL])
    responses = [json.loads(body) for headers, body in sent if headers["ce-type"].endswith(".response")]
    assert len(responses) == 2
    v1, v2 = answers
    assert responses[0] == v1  # V1: the answer itself
    wire = {o["name"]: o for o in responses[1]["outputs"]}
    client = {o["name"]: o for o in v2["outputs"]}
    assert wire["entities"] == client["entities"] and wire["intent"] == client["intent"]


def test_served_calls_are_stored_and_exported_with_entities_on_the_redacted_text(tmp_path, monkeypatch):
    """Predictor -> logger stand-in -> collector -> export: the e-mail and the phone number are redacted, the
    order number's offsets move with them, the entity on the phone number is dropped; V1 and V2 alike."""
    _, sent, _ = serve_calls(tmp_path, monkeypatch, True, [V1_CALL, V2_CALL])
    result, rows, stored = collect_and_export(tmp_path, sent)
    assert set(rows) == {"call-v1", "call-v2/0", "call-v2/1"}
    for request_id, raw in (("call-v1", PII_TEXT), ("call-v2/0", PII_TEXT), ("call-v2/1", PLAIN_TEXT)):
        row = rows[request_id]
        (entity,) = json.loads(row["entities"])
        assert entity == expected_order_entity(raw)
        assert row["text"][entity["start"] : entity["end"]] == entity["value"] == ORDER
        raw_order = next(e for e in raw_entities(raw) if e.type == "order_id")
        assert raw[raw_order.start : raw_order.end] == entity["value"]  # the same characters as the model tagged
    assert rows["call-v1"]["text"] == f"I am <EMAIL>, call me on <PHONE> about order {ORDER} please"
    assert rows["call-v2/1"]["entities"] == json.dumps([expected_order_entity(PLAIN_TEXT)], separators=(",", ":"))
    assert result.skipped == {"entities_on_personal_data": 2}  # the phone in each PII text
    everything = json.dumps(stored, default=str)
    assert EMAIL not in everything and PHONE not in everything  # neither raw nor as an entity's text
    for e in stored:
        if e["kind"] == "response":  # each entity kept but for its text, the user's characters
            keys = stored_entity_keys(json.loads(e["body"]))
            assert len(keys) >= 2 and {tuple(k) for k in keys} == {("type", "start", "end", "confidence")}


def test_kserve_shaped_events_in_either_order(tmp_path):
    """Hand-built binary-mode CloudEvents as KServe's logger posts them, the response first."""
    at = PII_TEXT.rindex(ORDER)  # its first occurrence is inside the phone number
    entity = {"type": "order_id", "text": ORDER, "start": at, "end": at + len(ORDER)}
    phone = {"type": "phone", "text": PHONE, "start": PII_TEXT.index(PHONE), "end": PII_TEXT.index(PHONE) + len(PHONE)}
    entities = [{**entity, "confidence": 0.97}, {**phone, "confidence": 0.88}]
    pred = {"intent": "order_status", "confidence": 0.9, "fallback": False, "model_version": "7", "entities": entities}
    v1 = [
        inference_event("response", "k-v1", {"predictions": [pred]}, T0 + timedelta(milliseconds=9)),
        inference_event("request", "k-v1", {"instances": [{"text": PII_TEXT}]}, T0),
    ]
    v2_outputs = [
        {"name": "intent", "shape": [1], "datatype": "BYTES", "data": ["order_status"]},
        {"name": "confidence", "shape": [1], "datatype": "FP32", "data": [0.9]},
        {"name": "fallback", "shape": [1], "datatype": "BOOL", "data": [False]},
        {"name": "entities", "shape": [1], "datatype": "BYTES", "data": [json.dumps(entities)]},
    ]
    v2_body = {"id": "k-v2", "model_name": NAME, "model_version": "7", "outputs": v2_outputs}
    v2 = [
        inference_event("response", "k-v2", {**v2_body, "parameters": {"model_version": "7"}}, T0),
        inference_event(
            "request", "k-v2", {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [PII_TEXT]}]}, T0
        ),
    ]
    result, rows, stored = collect_and_export(tmp_path, v1 + v2)
    for request_id in ("k-v1", "k-v2"):
        assert json.loads(rows[request_id]["entities"]) == [expected_order_entity(PII_TEXT)]
    assert result.skipped == {"entities_on_personal_data": 2}
    assert PHONE not in json.dumps(stored, default=str)


def test_without_entities_everything_is_empty_and_stored_as_sent(tmp_path, monkeypatch):
    _, sent, _ = serve_calls(tmp_path, monkeypatch, False, [V1_CALL, V2_CALL])
    legacy = inference_event(  # an answer from before entities existed: no such field at all
        "response",
        "old",
        {"predictions": [{"intent": "x", "confidence": 0.5, "fallback": True, "model_version": "7"}]},
        T0,
    )
    result, rows, stored = collect_and_export(
        tmp_path, [*sent, inference_event("request", "old", {"instances": ["hi"]}, T0), legacy]
    )
    assert {r: rows[r]["entities"] for r in rows} == dict.fromkeys(["call-v1", "call-v2/0", "call-v2/1", "old"], "[]")
    assert result.skipped == {}
    responses = {e["event_id"]: e["body"] for e in stored if e["kind"] == "response"}
    sent_bodies = {h["ce-id"]: b.decode() for h, b in sent if h["ce-type"].endswith(".response")}
    assert responses == {**sent_bodies, "old": legacy[1].decode()}  # nothing to remove: byte for byte


def test_an_older_store_gains_the_map_and_its_rows_export_without_entities(tmp_path):
    """A store made before the redaction map: the column is added; its requests have no map, so an answer's
    entities survive only where the text holds no placeholder (nothing moved)."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = sa.create_engine(url)
    with old.begin() as conn:
        columns = "event_id, kind, event_time, received_at, source, content_type, body, arm, body_is_json"
        conn.execute(sa.text(
            "CREATE TABLE inference_events (event_id VARCHAR(200), kind VARCHAR(8), event_time DATETIME, "
            "received_at DATETIME, source VARCHAR(500), inference_service VARCHAR(200) DEFAULT '', "
            "namespace VARCHAR(200) DEFAULT '', component VARCHAR(100) DEFAULT '', endpoint VARCHAR(100) DEFAULT '', "
            "metadata_json TEXT DEFAULT '{}', content_type VARCHAR(100), body TEXT, arm VARCHAR(10) DEFAULT '', "
            "body_is_json BOOLEAN DEFAULT 1, PRIMARY KEY (event_id, kind))"
        ))  # fmt: skip
        at = T0.replace(tzinfo=None).isoformat(sep=" ")
        values = "(:e, :k, :t, :t, 'p', 'application/json', :b, 'stable', 1)"
        pred = {"intent": "order_status", "confidence": 0.9, "fallback": False, "model_version": "7"}
        order = {"type": "order_id", "start": 15, "end": 20, "confidence": 0.9}
        for event_id, text, entities in (
            ("plain", PLAIN_TEXT, [order]),
            ("redacted", f"I am <EMAIL>, where is order {ORDER}", [order]),
            ("before", "where is my order", None),
        ):
            answer = {**pred, **({"entities": entities} if entities else {})}
            for kind, body in (("request", {"instances": [text]}), ("response", {"predictions": [answer]})):
                conn.execute(
                    sa.text(f"INSERT INTO inference_events ({columns}) VALUES {values}"),
                    {"e": event_id, "k": kind, "t": at, "b": json.dumps(body)},
                )  # fmt: skip
    old.dispose()
    engine = open_store(url)
    assert "redactions" in {c["name"] for c in sa.inspect(engine).get_columns("inference_events")}
    result = export_window(engine, T0 - timedelta(hours=1), T0 + timedelta(hours=1), tmp_path / "o.parquet")
    engine.dispose()
    rows = {r["request_id"]: r for r in read_snapshot(tmp_path / "o.parquet").to_dict("records")}
    assert json.loads(rows["plain"]["entities"]) == [{**expected_order_entity(PLAIN_TEXT), "confidence": 0.9}]
    assert rows["redacted"]["entities"] == rows["before"]["entities"] == "[]"
    assert result.skipped == {"entities_unmappable": 1}


@pytest.mark.parametrize("strict", [True, False])
def test_a_snapshot_written_before_the_column_reads_with_no_entities(tmp_path, strict):
    rows = pd.DataFrame([event("where is my order", "order_status", i=i) for i in range(3)])
    rows.drop(columns=["entities"]).to_parquet(tmp_path / "old.parquet", index=False)
    assert read_snapshot(tmp_path / "old.parquet", strict=strict)["entities"].tolist() == ["[]"] * 3
    write_snapshot(
        rows.assign(entities='[{"start":15,"end":17,"type":"x","value":"or","confidence":0.5}]'),
        tmp_path / "new.parquet",
    )
    assert pq.read_table(tmp_path / "new.parquet").column("entities").to_pylist()[0].startswith('[{"start":15')


def test_redacted_span_moves_spans_by_the_placeholders_and_refuses_personal_data():
    raw = f"{EMAIL}, call me on {PHONE}: order {ORDER}"
    redacted, findings = redact(raw)
    assert redacted == f"<EMAIL>, call me on <PHONE>: order {ORDER}" and len(findings) == 2
    for word in ("call", ORDER):  # between the two, and after both
        at = raw.rindex(word)
        start, end = redacted_span(findings, at, at + len(word))
        assert (start, end) == (redacted.rindex(word), redacted.rindex(word) + len(word))
    assert redacted_span(findings, 0, len(EMAIL)) is None  # exactly the e-mail
    assert redacted_span(findings, raw.index(PHONE) + 3, raw.index(PHONE) + 6) is None  # inside the phone number
    assert redacted_span(findings, len(EMAIL) - 2, len(EMAIL) + 4) is None  # straddles the e-mail's end
    synthetic = [Finding("EMAIL", 2, 12, 1.0), Finding("PHONE", 20, 30, 0.9)]  # -3 chars, then -3 more
    assert redacted_span(synthetic, 0, 2) == (0, 2)
    assert redacted_span(synthetic, 12, 20) == (9, 17)
    assert redacted_span(synthetic, 30, 35) == (24, 29)


def test_v2_entities_output_is_one_json_text_per_prediction():
    endpoint = Endpoint(NAME, "7", "stable")
    request = ParsedRequest(["a 12345", "b"], "v2", "r-1", "")
    preds = [Prediction("order_status", 0.9, False, raw_entities("a 12345")), Prediction("order_status", 0.4, True)]
    rest = v2_response(endpoint, request, preds, ["x", "y"]).to_rest()[0]
    (entities,) = [o for o in rest["outputs"] if o["name"] == "entities"]
    assert entities["datatype"] == "BYTES" and entities["shape"] == [2]
    assert [json.loads(d) for d in entities["data"]] == [[Entity("order_id", "12345", 2, 7, 0.97).to_dict()], []]
    v1 = v1_response(endpoint, request, preds, ["x", "y"])
    assert [p["entities"] for p in v1["predictions"]] == [json.loads(d) for d in entities["data"]]


def test_a_response_body_that_is_not_json_is_redacted_as_one_string(tmp_path):
    """KServe's logger posts the answer's bytes as they were (the binary extension is not JSON): entity texts
    could be anywhere in them, so the whole body is redacted, as a request body that is not JSON is."""
    raw = f'{{"outputs": [...]}}\x00[{{"type":"phone","text":"call me on {PHONE}"}}]'
    events = [
        inference_event("request", "bin", {"instances": [PII_TEXT]}, T0),
        inference_event("response", "bin", raw, T0, content_type="application/octet-stream"),
    ]
    _, _, stored = collect_and_export(tmp_path, events)
    (response,) = [e for e in stored if e["kind"] == "response"]
    assert response["body_is_json"] in (False, 0) and PHONE not in response["body"]
    assert response["body"].endswith('"text":"call me on <PHONE>"}]')
