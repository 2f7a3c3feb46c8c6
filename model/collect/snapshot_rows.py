"""How the conversation store's rows become a conversation snapshot's rows: the rules of ``flywheel export-events``.

A call's request and response events (joined on the CloudEvent id, so either may have arrived first)
give one row per text that has a complete prediction (``call_rows``); the feedback naming a request,
a text or a conversation is folded into ``thumbs``/``abandoned``/``escalated``/``resolved``
(``answered_rows``, in memory; ``model.collect.streamed_export`` does the same out of core). The
rules themselves are documented with the snapshot's schema (``model/data/conversations.py``).
The content digest is a sha256 of the rows' content in request-id order (``hash_rows``).
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime

from model.collect.redaction import answer_entities, entities_on_redacted, request_texts, text_findings

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


@functools.lru_cache(maxsize=1024)
def _json(text: str):
    """A JSON text's value, parsed once however many readers a row has (a call's two events share their
    metadata; a body is read for its texts and for its rows): never modify it. ValueError if not JSON."""
    return json.loads(text)


def _conversation_id(metadata_json: str) -> str:
    for name, values in _json(metadata_json or "{}").items():
        if name.lower() == "x-conversation-id" and values:
            return str(values[0] if isinstance(values, list) else values)
    return ""


def _body(event: dict) -> dict:
    if event.get("body_is_json") is False:  # kept as raw text: no texts or predictions to read
        return {}
    try:
        value = _json(event["body"])
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


def _text_rows(call_id: str, req: dict, resp: dict, skipped: Counter) -> list[dict]:
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
        rows.extend(call_rows(call_id, pair, skipped))

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
    return hash_rows(sorted(rows, key=lambda r: r["request_id"]))


def hash_rows(rows: Iterable[dict]) -> str:
    """sha256 of the rows' content, in the order given (request-id order makes the content digest)."""
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(row, default=lambda v: v.isoformat(), sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def call_rows(call_id: str, pair: dict[str, dict], skipped: Counter) -> list[dict]:
    """The rows of one call, from its events by kind (``request``, ``response``), each with its ``_call``;
    none, counted in ``skipped``, for a call without both events or with unreadable ones."""
    req, resp = pair.get("request"), pair.get("response")
    if req is None or resp is None:
        skipped["no_response" if resp is None else "no_request"] += 1
        return []
    return _text_rows(call_id, req, resp, skipped)


def feedback_ids(events: list[dict]) -> tuple[set[str], set[str]]:
    """The ids feedback may name for these events: every call id, every ``<ce-id>/<i>`` of a request's
    text i, and every conversation id a front end sent."""
    request_ids = {e["event_id"] for e in events}
    # feedback may name one text of a several-text request: <ce-id>/<i>
    text_ids = {
        f"{e['event_id']}/{i}" for e in events if e["kind"] == "request" for i in range(len(request_texts(_body(e))))
    }
    return request_ids | text_ids, {_conversation_id(e["metadata_json"]) for e in events}
