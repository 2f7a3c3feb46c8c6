"""A synthetic window of answered requests in the conversation store, as the collector writes them.

``fill_store(engines, spec)`` writes ``spec.requests`` chat requests (``scripts/synthetic_traffic.py``
says what they hold), spread over conversations in the ``spec.days`` before ``spec.end``, with
KServe's request and response events and the chat front end's feedback, into each store (SQLite:
executemany in large transactions; PostgreSQL: ``COPY``). The same ``spec`` (seed included) gives the
same rows.

Each call is turned into store rows by the collector's own code (``model.collect.redaction``; the
real PII scanner) without the CloudEvents round trip; ``logger_events`` gives the CloudEvents the
logger and the front end would have sent for the same call, and a test checks that the collector's
``parse_event`` makes the same rows of them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

import sqlalchemy as sa

from model.collect.redaction import redact_request, strip_entity_texts
from model.collect.store import feedback_events, inference_events
from model.serve.logger import AGENT_SOURCE_URI, cloudevents_time
from scripts.synthetic_traffic import FRONT_END, INFERENCE_SERVICE, VERSIONS, Call, Feedback, Traffic, WindowSpec

# ---- what is stored -----------------------------------------------------------------------------


def logger_events(call: Call) -> list[tuple[dict, bytes]]:
    """The binary-mode CloudEvents KServe's logger posts for ``call`` (``model/serve/logger.py``)."""
    common = {
        "ce-specversion": "1.0",
        "ce-id": call.request_id,
        "ce-source": AGENT_SOURCE_URI,
        "ce-inferenceservicename": INFERENCE_SERVICE,
        "ce-namespace": "local",
        "ce-component": "predictor",
        "ce-endpoint": "",
        "ce-metadata": json.dumps({"X-Conversation-Id": [call.conversation_id]}),
        "content-type": "application/json",
    }
    out = [
        (
            {**common, "ce-type": "org.kubeflow.serving.inference.request", "ce-time": cloudevents_time(call.asked)},
            json.dumps(_request_body(call)).encode(),
        )
    ]
    if call.predictions is not None:
        headers = {**common, "ce-type": "org.kubeflow.serving.inference.response"}
        out.append(({**headers, "ce-time": cloudevents_time(call.answered)}, json.dumps(_response_body(call)).encode()))
    return out


def feedback_event(f: Feedback) -> tuple[dict, bytes]:
    """The CloudEvent the chat front end posts for ``f``."""
    headers = {
        "ce-specversion": "1.0",
        "ce-id": f.event_id,
        "ce-source": FRONT_END,
        "ce-type": "org.flywheel.feedback",
        "ce-time": cloudevents_time(f.at),
        "content-type": "application/json",
    }
    payload = {"kind": f.kind, "request_id": f.request_id, "conversation_id": f.conversation_id}
    return headers, json.dumps({**payload, **({"comment": f.comment} if f.comment else {})}).encode()


def _request_body(call: Call) -> dict:
    if call.protocol == "v1":
        return {"instances": call.texts}
    shape = [len(call.texts)]
    return {
        "id": call.request_id,
        "inputs": [{"name": "text", "shape": shape, "datatype": "BYTES", "data": call.texts}],
    }


def _response_body(call: Call) -> dict:
    if call.protocol == "v1":
        return {"predictions": call.predictions}
    preds, shape = call.predictions, [len(call.predictions)]
    outputs = [
        ("intent", "BYTES", [p["intent"] for p in preds]),
        ("confidence", "FP32", [p["confidence"] for p in preds]),
        ("fallback", "BOOL", [p["fallback"] for p in preds]),
        ("reply", "BYTES", [p["reply"] for p in preds]),
        ("entities", "BYTES", [json.dumps(p["entities"], ensure_ascii=False, separators=(",", ":")) for p in preds]),
    ]
    return {
        "id": call.request_id,
        "model_name": INFERENCE_SERVICE,
        "model_version": call.version,
        "outputs": [{"name": n, "shape": shape, "datatype": d, "data": v} for n, d, v in outputs],
        "parameters": {"model_version": call.version},
    }


def _received(moment: datetime) -> datetime:
    return moment + timedelta(milliseconds=40)  # the logger posts after the call; the collector stores on arrival


def store_rows(call: Call, redact: Callable) -> list[dict]:
    """The ``inference_events`` rows the collector writes for ``call`` (``model.collect.events.parse_event``
    with the arm the collector attributes), made with the collector's own redaction code."""
    common = {
        "event_id": call.request_id,
        "source": AGENT_SOURCE_URI,
        "inference_service": INFERENCE_SERVICE,
        "namespace": "local",
        "component": "predictor",
        "endpoint": "",
        "metadata_json": json.dumps({"X-Conversation-Id": [call.conversation_id]}),
        "content_type": "application/json",
        "body_is_json": True,
    }
    request = _request_body(call)
    stored, redactions = redact_request(request, redact)
    rows = [
        {
            **common,
            "kind": "request",
            "event_time": call.asked,
            "received_at": _received(call.asked),
            "body": json.dumps(request) if stored == request else json.dumps(stored, ensure_ascii=False),
            "redactions": redactions,
            "arm": "unknown",
        }
    ]
    if call.predictions is not None:
        response = _response_body(call)
        stored = strip_entity_texts(response)
        rows.append(
            {
                **common,
                "kind": "response",
                "event_time": call.answered,
                "received_at": _received(call.answered),
                "body": json.dumps(response) if stored == response else json.dumps(stored, ensure_ascii=False),
                "redactions": "",
                "arm": VERSIONS[call.version],
            }
        )
    return rows


def feedback_row(f: Feedback) -> dict:
    return {
        "event_id": f.event_id,
        "event_time": f.at,
        "received_at": _received(f.at),
        "source": FRONT_END,
        "kind": f.kind,
        "request_id": f.request_id,
        "conversation_id": f.conversation_id,
        "comment": f.comment,
    }


def chunks(spec: WindowSpec, redact: Callable, size: int = 20_000) -> Iterator[tuple[list[dict], list[dict]]]:
    """The window's store rows, about ``size`` calls at a time: (inference rows, feedback rows)."""
    inference, feedback = [], []
    for calls, reactions in Traffic(spec).conversations():
        for call in calls:
            inference += store_rows(call, redact)
        feedback += [feedback_row(f) for f in reactions]
        if len(inference) >= 2 * size:
            yield inference, feedback
            inference, feedback = [], []
    if inference or feedback:
        yield inference, feedback


def write_rows(engine: sa.Engine, inference: list[dict], feedback: list[dict]) -> None:
    """Bulk insert: ``COPY`` on PostgreSQL, one executemany transaction on SQLite."""
    if engine.dialect.name == "postgresql":
        raw = engine.raw_connection()
        try:
            with raw.driver_connection.cursor() as cur:
                for table, rows in ((inference_events, inference), (feedback_events, feedback)):
                    names = [c.name for c in table.columns]
                    with cur.copy(f"COPY {table.name} ({', '.join(names)}) FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row([row[n] for n in names])
            raw.driver_connection.commit()
        finally:
            raw.close()
        return
    with engine.begin() as conn:
        conn.exec_driver_sql("PRAGMA cache_size=-262144")  # 256 MiB: inserts at random keys stay in memory
        if inference:
            conn.execute(inference_events.insert(), inference)
        if feedback:
            conn.execute(feedback_events.insert(), feedback)


def fill_store(engines: list[sa.Engine], spec: WindowSpec, redact: Callable, progress=None) -> dict:
    """Write the window into every engine's store (tables created beforehand); the rows written, counted."""
    counts = {"inference_events": 0, "feedback_events": 0}
    for inference, feedback in chunks(spec, redact):
        for engine in engines:
            write_rows(engine, inference, feedback)
        counts["inference_events"] += len(inference)
        counts["feedback_events"] += len(feedback)
        if progress:
            progress(counts)
    return counts
