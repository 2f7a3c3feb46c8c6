"""Export a time window of the conversation store as a conversation snapshot (``flywheel export-events``).

The snapshot is exactly ``model.data.conversations.SNAPSHOT_SCHEMA``: one row per answered request, with
the feedback that refers to it folded into ``thumbs``/``abandoned``/``escalated``/``resolved``, so
``check-data --events``, ``prepare --snapshot`` and ``drift --current`` read the export directly.
How requests, multi-text requests and feedback become rows is documented in that module.

Request and response are joined on the CloudEvent id here, so either may have arrived first. The
digest is a sha256 of the rows' content in request-id order, written into the file's metadata with
the window and returned, so a training run or drift check can name exactly the data it read.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from model.collect.args import ExportEventsArgs
from model.collect.redaction import answer_entities, entities_on_redacted, request_texts, text_findings
from model.collect.store import open_store, read_feedback, read_inference
from model.core.config import CollectorConfig
from model.core.errors import FlywheelError
from model.core.steps import StepResult
from model.data.conversations import COLUMNS, DIGEST_KEY, WINDOW_KEYS, write_snapshot

__all__ = ["DIGEST_KEY", "Exported", "answered_rows", "content_digest", "export_step", "export_window"]

THUMBS_OF_KIND = {"thumbs_up": "up", "thumbs_down": "down"}


def _predictions(body: dict) -> list[dict]:
    """Predictions of a V1 (``predictions``) or V2 (named ``outputs``) response body."""
    if isinstance(body.get("predictions"), list):
        return [p if isinstance(p, dict) else {"intent": p} for p in body["predictions"]]
    outputs = {o.get("name"): o.get("data") or [] for o in body.get("outputs") or [] if isinstance(o, dict)}
    params = body.get("parameters") or {}
    n = len(outputs.get("intent", []))
    column = {name: (outputs.get(name) or [None] * n) for name in ("confidence", "fallback", "entities")}
    return [
        {
            "intent": outputs["intent"][i],
            **{name: values[i] if i < len(values) else None for name, values in column.items()},
            "model_version": params.get("model_version") or body.get("model_version"),
        }
        for i in range(n)
    ]


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _conversation_id(metadata_json: str) -> str:
    for name, values in json.loads(metadata_json or "{}").items():
        if name.lower() == "x-conversation-id" and values:
            return str(values[0] if isinstance(values, list) else values)
    return ""


def _body(event: dict) -> dict:
    if event.get("body_is_json") is False:  # kept as raw text: no texts or predictions to read
        return {}
    try:
        value = json.loads(event["body"])
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _utc(moment: datetime) -> datetime:
    """Aware UTC; naive values are UTC already (the store keeps UTC, SQLite returns it without tzinfo)."""
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def answer_version(response: dict) -> str:
    """The model version a response event's answer names ("" when it names none)."""
    preds = _predictions(_body(response))
    return next((str(p["model_version"]) for p in preds if p.get("model_version") not in (None, "")), "")


def _call_rows(call_id: str, req: dict, resp: dict, skipped: Counter) -> list[dict]:
    """The rows of one answered call: one per text that has a complete prediction."""
    texts, preds = request_texts(_body(req)), _predictions(_body(resp))
    if not texts or len(texts) != len(preds):
        skipped["unreadable_bodies"] += 1
        return []
    findings = text_findings(req, len(texts)) or [None] * len(texts)
    conversation = _conversation_id(req["metadata_json"]) or _conversation_id(resp["metadata_json"])
    latency = max(0.0, (_utc(resp["event_time"]) - _utc(req["event_time"])).total_seconds() * 1000)
    # attributed by the collector from the answer's model version (model.collect.arms)
    arm = resp.get("arm") or "unknown"
    rows = []
    for i, (text, pred, redacted) in enumerate(zip(texts, preds, findings)):
        confidence, fallback, intent = _number(pred.get("confidence")), pred.get("fallback"), pred.get("intent")
        complete = isinstance(text, str) and isinstance(intent, str) and isinstance(fallback, bool)
        if not complete or confidence is None:
            skipped["incomplete_predictions"] += 1
            continue
        request_id = call_id if len(texts) == 1 else f"{call_id}/{i}"
        version = pred.get("model_version")
        rows.append(
            {
                "request_id": request_id,
                "conversation_id": conversation or call_id,
                "timestamp": _utc(req["event_time"]),
                "text": text,
                "predicted_intent": intent,
                "confidence": confidence,
                "fallback": fallback,
                "model_version": "" if version is None else str(version),
                "arm": arm,
                "latency_ms": latency,
                "thumbs": "",
                "abandoned": False,
                "escalated": False,
                "resolved": False,
                "entities": entities_on_redacted(answer_entities(pred.get("entities")), text, redacted, skipped),
                "_call": call_id,
            }
        )
    return rows


def answered_rows(events: list[dict], feedback: list[dict]) -> tuple[list[dict], dict]:
    """Store rows (inference and feedback events) -> snapshot rows and what was left out, counted."""
    calls: dict[str, dict] = {}
    for e in events:
        calls.setdefault(e["event_id"], {})[e["kind"]] = e
    skipped: Counter = Counter()
    rows: list[dict] = []
    for call_id, pair in calls.items():
        req, resp = pair.get("request"), pair.get("response")
        if req is None or resp is None:
            skipped["no_response" if resp is None else "no_request"] += 1
            continue
        rows.extend(_call_rows(call_id, req, resp, skipped))

    by_id: dict[str, list[dict]] = {}
    for row in rows:
        by_id.setdefault(row["request_id"], []).append(row)
        if row["request_id"] != row["_call"]:
            by_id.setdefault(row["_call"], []).append(row)
    # per conversation: (timestamp, call) of each answered call, in time order, for "last answer before"
    turns: dict[str, list[tuple[datetime, str]]] = {}
    for row in rows:
        turns.setdefault(row["conversation_id"], []).append((row["timestamp"], row["_call"]))
    turns = {k: sorted(set(v)) for k, v in turns.items()}

    for f in sorted(feedback, key=lambda f: (_utc(f["event_time"]), f["event_id"])):
        if f["request_id"]:
            targets = by_id.get(f["request_id"], [])
        else:
            history = turns.get(f["conversation_id"], [])
            at = bisect.bisect_right(history, (_utc(f["event_time"]), "\uffff"))
            targets = by_id.get(history[at - 1][1], []) if at else []
        if not targets:
            skipped["feedback_without_answer"] += 1
            continue
        for row in targets:
            if f["kind"] in THUMBS_OF_KIND:
                row["thumbs"] = THUMBS_OF_KIND[f["kind"]]
            else:
                row[f["kind"]] = True
    for row in rows:
        del row["_call"]
    rows.sort(key=lambda r: (r["timestamp"], r["request_id"]))
    return rows, dict(sorted(skipped.items()))


def content_digest(rows: list[dict]) -> str:
    h = hashlib.sha256()
    for row in sorted(rows, key=lambda r: r["request_id"]):
        h.update(json.dumps(row, default=lambda v: v.isoformat(), sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def window_rows(engine: sa.Engine, start: datetime, end: datetime) -> tuple[list[dict], list[dict], dict]:
    """The window's stored inference events, its snapshot rows (feedback folded in), what was skipped."""
    events = read_inference(engine, start, end)
    request_ids = {e["event_id"] for e in events}
    # feedback may name one text of a several-text request: <ce-id>/<i>
    text_ids = {
        f"{e['event_id']}/{i}" for e in events if e["kind"] == "request" for i in range(len(request_texts(_body(e))))
    }
    conversations = {_conversation_id(e["metadata_json"]) for e in events}
    rows, skipped = answered_rows(events, read_feedback(engine, request_ids | text_ids, conversations))
    return events, rows, skipped


@dataclass(frozen=True)
class Exported:
    """A window of logged conversations written as a snapshot: where, how much, and its content digest."""

    path: str
    rows: int  # answered requests (one row per text)
    requests: int  # logged calls
    content_digest: str
    window: dict[str, str]  # start, end (ISO 8601; the end excluded)
    rated: int  # rows with a thumbs up or down
    with_feedback: int  # rows with any feedback
    skipped: dict[str, int]  # what was left out, by reason


def export_window(engine: sa.Engine, start: datetime, end: datetime, out: Path) -> Exported:
    """Write the window's answered requests to ``out`` as a conversation snapshot (temporary file + rename)."""
    start, end = _utc(start), _utc(end)
    if end <= start:
        raise FlywheelError(f"export window is empty: end {end.isoformat()} is not after start {start.isoformat()}")
    events, rows, skipped = window_rows(engine, start, end)
    request_ids = {e["event_id"] for e in events}
    digest = content_digest(rows)
    metadata = {DIGEST_KEY: digest.encode(), **dict(zip(WINDOW_KEYS, (t.isoformat().encode() for t in (start, end))))}
    write_snapshot(pd.DataFrame(rows, columns=COLUMNS), out, metadata)
    return Exported(
        path=str(out),
        rows=len(rows),
        requests=len(request_ids),
        content_digest=digest,
        window={"start": start.isoformat(), "end": end.isoformat()},
        rated=sum(1 for r in rows if r["thumbs"]),
        with_feedback=sum(1 for r in rows if r["thumbs"] or r["abandoned"] or r["escalated"] or r["resolved"]),
        skipped=skipped,
    )


def _when(value: str, flag: str) -> datetime:
    try:
        return _utc(datetime.fromisoformat(value))
    except ValueError as exc:
        raise FlywheelError(f"{flag} must be an ISO 8601 timestamp (e.g. 2026-11-01T00:00:00Z): {exc}") from exc


def request_window(path: Path) -> tuple[datetime, datetime]:
    """The window of a retrain request (``flywheel request-retrain``'s JSON), or of the newest in a folder."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.json"))  # named <UTC time>.json by request-retrain: the last is the newest
        if not found:
            raise FlywheelError(f"{path}: no retrain request (*.json) in this folder")
        path = found[-1]
    try:
        window = json.loads(path.read_text())["window"]
        start, end = window["start"], window["end"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FlywheelError(f"{path}: not a retrain request with a window {{start, end}}: {exc!r}") from exc
    return _when(start, f"{path}: window start"), _when(end, f"{path}: window end")


def export_command(args: ExportEventsArgs, *, collect: CollectorConfig, work: Path) -> StepResult[Exported]:
    """Export a window of logged conversations as a snapshot (model/data/conversations.py) with a content digest."""
    return StepResult(
        *export_step(
            args.start or "", args.end or "", args.days or 0, args.request or "", args.out or "", collect, work
        )
    )


def export_step(
    start: str, end: str, days: float, request: str, out: str, cfg: CollectorConfig, work: Path
) -> tuple[Exported, str]:
    """Pick the window (exactly one of ``start``, ``days``, ``request``), export it, describe it."""
    chosen = [name for name, given in (("--start", start), ("--days", days > 0), ("--request", request)) if given]
    if len(chosen) != 1:
        raise FlywheelError(
            "give exactly one of --start (ISO 8601), --days (the last N days) or --request (a retrain request), "
            f"got {', '.join(chosen) or 'none'}"
        )
    if request:
        if end:
            raise FlywheelError("--end does not go with --request: the request names its window")
        t0, t1 = request_window(Path(request))
    else:
        t1 = _when(end, "--end") if end else datetime.now(UTC)
        t0 = _when(start, "--start") if start else t1 - timedelta(days=days)
    target = Path(out) if out else work / "snapshots" / f"events-{t0:%Y%m%dT%H%M%S}-{t1:%Y%m%dT%H%M%S}.parquet"
    engine = open_store(cfg.store_url)
    try:
        result = export_window(engine, t0, t1, target)
    finally:
        engine.dispose()
    left_out = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in result.skipped.items()) or "nothing"
    md = (
        f"## Logged conversations {result.window['start']} to {result.window['end']}\n\n"
        f"{result.rows} answered requests ({result.rated} rated, {result.with_feedback} with feedback) "
        f"from {result.requests} logged calls in `{result.path}`, content digest "
        f"`{result.content_digest}`. Left out: {left_out}.\n"
    )
    return result, md
