"""Export a time window of the conversation store as a Parquet snapshot of logged events.

One row per classified text (a request may carry several), following DESIGN.md's "Logged event":
request id, conversation id, timestamp, text, predicted intent, confidence, fallback flag, model
version, arm, latency, plus the feedback that refers to the request or its conversation. Request and
response are joined on the CloudEvent id here, so either may have arrived first; a request whose
response never came (the model failed) keeps empty prediction fields.

The digest is a sha256 of the rows' content in a canonical order, written into the file's metadata
and returned, so a training run or drift check can name exactly the data it read.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from model.config import CollectorConfig, work_dir
from model.errors import FlywheelError
from model.store import open_store, read_feedback, read_inference

SCHEMA = pa.schema(
    [
        ("request_id", pa.string()),
        ("index", pa.int32()),
        ("conversation_id", pa.string()),
        ("timestamp", pa.timestamp("us", tz="UTC")),
        ("text", pa.string()),
        ("predicted_intent", pa.string()),
        ("confidence", pa.float64()),
        ("fallback", pa.bool_()),
        ("model_version", pa.string()),
        ("arm", pa.string()),
        ("latency_ms", pa.float64()),
        ("inference_service", pa.string()),
        ("feedback", pa.list_(pa.string())),
    ]
)
ARM_OF_ENDPOINT = {"default": "stable", "canary": "canary"}
DIGEST_KEY = b"flywheel.content_digest"


def _texts(body: dict) -> list[str | None]:
    """Texts of a V1 (``instances``) or V2 (``inputs`` named text) request body."""
    if isinstance(body.get("instances"), list):
        return [i.get("text") if isinstance(i, dict) else i for i in body["instances"]]
    for tensor in body.get("inputs") or []:
        if isinstance(tensor, dict) and tensor.get("name") == "text" and isinstance(tensor.get("data"), list):
            return list(tensor["data"])
    return []


def _predictions(body: dict) -> list[dict]:
    """Predictions of a V1 (``predictions``) or V2 (named ``outputs``) response body."""
    if isinstance(body.get("predictions"), list):
        return [p if isinstance(p, dict) else {"intent": p} for p in body["predictions"]]
    outputs = {o.get("name"): o.get("data") or [] for o in body.get("outputs") or [] if isinstance(o, dict)}
    params = body.get("parameters") or {}
    n = len(outputs.get("intent", []))
    return [
        {
            "intent": outputs["intent"][i],
            "confidence": (outputs.get("confidence") or [None] * n)[i],
            "fallback": (outputs.get("fallback") or [None] * n)[i],
            "model_version": params.get("model_version") or body.get("model_version"),
            "arm": params.get("arm"),
        }
        for i in range(n)
    ]


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _string(value) -> str | None:
    return value if isinstance(value, str) else None


def _conversation_id(metadata_json: str) -> str:
    for name, values in json.loads(metadata_json or "{}").items():
        if name.lower() == "x-conversation-id" and values:
            return str(values[0] if isinstance(values, list) else values)
    return ""


def _body(event: dict | None) -> dict:
    if event is None:
        return {}
    try:
        value = json.loads(event["body"])
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _utc(moment: datetime) -> datetime:
    """Aware UTC; naive values are UTC already (the store keeps UTC, SQLite returns it without tzinfo)."""
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def logged_events(events: list[dict], feedback: list[dict]) -> list[dict]:
    calls: dict[str, dict] = {}
    for e in events:
        calls.setdefault(e["event_id"], {})[e["kind"]] = e
    by_request, by_conversation = {}, {}
    for f in sorted(feedback, key=lambda f: (_utc(f["event_time"]), f["event_id"])):
        if f["request_id"]:
            by_request.setdefault(f["request_id"], []).append(f["kind"])
        if f["conversation_id"]:
            by_conversation.setdefault(f["conversation_id"], []).append(f["kind"])
    rows = []
    for request_id, pair in calls.items():
        req, resp = pair.get("request"), pair.get("response")
        first = req or resp
        texts, preds = _texts(_body(req)), _predictions(_body(resp))
        conversation = _conversation_id(first["metadata_json"])
        latency = (_utc(resp["event_time"]) - _utc(req["event_time"])).total_seconds() * 1000 if req and resp else None
        for i in range(max(len(texts), len(preds), 1)):
            text = texts[i] if i < len(texts) else None
            pred = preds[i] if i < len(preds) else {}
            rows.append(
                {
                    "request_id": request_id,
                    "index": i,
                    "conversation_id": conversation,
                    "timestamp": _utc(first["event_time"]),
                    "text": _string(text),
                    "predicted_intent": _string(pred.get("intent")),
                    "confidence": _number(pred.get("confidence")),
                    "fallback": pred.get("fallback") if isinstance(pred.get("fallback"), bool) else None,
                    "model_version": None if pred.get("model_version") is None else str(pred["model_version"]),
                    "arm": _string(pred.get("arm"))
                    or ARM_OF_ENDPOINT.get(first["endpoint"], first["endpoint"] or None),
                    "latency_ms": latency,
                    "inference_service": first["inference_service"],
                    "feedback": by_request.get(request_id, []) + by_conversation.get(conversation, []),
                }
            )
    rows.sort(key=lambda r: (r["timestamp"], r["request_id"], r["index"]))
    return rows


def content_digest(rows: list[dict]) -> str:
    h = hashlib.sha256()
    for row in sorted(rows, key=lambda r: (r["request_id"], r["index"])):
        h.update(json.dumps(row, default=lambda v: v.isoformat(), sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def export_window(engine: sa.Engine, start: datetime, end: datetime, out: Path) -> dict:
    """Write the window's logged events to ``out`` (through a temporary file and a rename)."""
    start, end = _utc(start), _utc(end)
    if end <= start:
        raise FlywheelError(f"export window is empty: end {end.isoformat()} is not after start {start.isoformat()}")
    events = read_inference(engine, start, end)
    request_ids = {e["event_id"] for e in events}
    conversations = {_conversation_id(e["metadata_json"]) for e in events}
    rows = logged_events(events, read_feedback(engine, request_ids, conversations))
    digest = content_digest(rows)
    table = pa.Table.from_pylist(rows, schema=SCHEMA).replace_schema_metadata(
        {
            DIGEST_KEY: digest.encode(),
            b"flywheel.window_start": start.isoformat().encode(),
            b"flywheel.window_end": end.isoformat().encode(),
        }
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, out)
    return {
        "path": str(out),
        "rows": len(rows),
        "requests": len(request_ids),
        "content_digest": digest,
        "window_start": start.isoformat(),
        "window_end": end.isoformat(),
        "feedback_rows": sum(1 for r in rows if r["feedback"]),
    }


def export_step(start: str, end: str, cfg: CollectorConfig) -> tuple[dict, str]:
    try:
        t0 = datetime.fromisoformat(start) if start else None
        t1 = datetime.fromisoformat(end) if end else datetime.now(UTC)
    except ValueError as exc:
        raise FlywheelError(f"--start/--end must be ISO 8601 timestamps: {exc}") from exc
    if t0 is None:
        raise FlywheelError("--start is required (ISO 8601, e.g. 2026-11-01T00:00:00Z)")
    t0, t1 = _utc(t0), _utc(t1)
    out = (
        Path(cfg.export_out)
        if cfg.export_out
        else (work_dir() / "snapshots" / f"events-{t0:%Y%m%dT%H%M%S}-{t1:%Y%m%dT%H%M%S}.parquet")
    )
    result = export_window(open_store(cfg.store_url), t0, t1, out)
    md = (
        f"## Logged events {result['window_start']} to {result['window_end']}\n\n"
        f"{result['rows']} rows from {result['requests']} requests ({result['feedback_rows']} with feedback) in "
        f"`{result['path']}`, content digest `{result['content_digest']}`.\n"
    )
    return result, md
