"""One HTTP request to the collector as a row to store: CloudEvents parsed (binary or structured mode),
user texts redacted, entity texts removed, every field checked. Bad input is ``BadEvent`` with the
4xx status and the reason; nothing here touches the store.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from cloudevents.exceptions import GenericException
from cloudevents.http import from_http

from model.collect.redaction import Redact, redact_request, storable_json, strip_entity_texts, without_surrogates

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
FEEDBACK_TYPE = "org.flywheel.feedback"
EVENT_TYPES = (REQUEST_TYPE, RESPONSE_TYPE, FEEDBACK_TYPE)
FEEDBACK_KINDS = ("thumbs_up", "thumbs_down", "abandoned", "escalated", "resolved")
MAX_ID_CHARS = 200


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
            raw = raw.replace("\x00", "\ufffd")  # PostgreSQL holds no NUL in text: replaced, as bad bytes are
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


def storable(row: dict) -> None:
    """BadEvent naming a text of the row that no store can hold: PostgreSQL refuses NUL characters, and a
    lone surrogate (JSON's ``"\\ud800"``) is not UTF-8. Refused here, not by the store later, where a
    spooled event would hold up every event behind it."""
    for name, value in row.items():
        if not isinstance(value, str):
            continue
        if "\x00" in value:
            raise BadEvent(400, f"{name} contains a NUL character")
        try:
            value.encode()
        except UnicodeEncodeError as exc:
            raise BadEvent(400, f"{name} is not valid Unicode: a lone surrogate at character {exc.start}") from None


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
