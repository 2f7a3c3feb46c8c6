"""The conversation snapshot: what the collector exports and ``flywheel prepare`` / ``check-data`` read.

One Parquet file, **one row per answered request** (the "Logged event" contract of DESIGN.md), with
the feedback that refers to it already folded in. The collector writes it; this module is the one
place its schema is defined: the export writes it with ``write_snapshot``.

| column | type | meaning |
|---|---|---|
| ``request_id`` | string, unique | the KServe logger's ``ce-id``: join key of request, response and feedback |
| ``conversation_id`` | string | the chat session the message belongs to |
| ``timestamp`` | timestamp[us, UTC] | when the request arrived (``ce-time`` of the request event) |
| ``text`` | string | the user's message, **already redacted** (``data_checks.pii.redact``) at ingestion |
| ``predicted_intent`` | string | the model's top intent (also when it fell back) |
| ``confidence`` | float64 in [0, 1] | the model's probability for ``predicted_intent`` |
| ``fallback`` | bool | the bot handed off instead of answering (confidence under the model's threshold) |
| ``model_version`` | string | registered model version that answered (e.g. ``"7"``) |
| ``arm`` | string | ``stable``, ``canary``, ``shadow`` or ``unknown``: which arm served the answer |
| ``latency_ms`` | float64 | model latency for this request |
| ``thumbs`` | string | ``up``, ``down`` or ``""`` (not rated) |
| ``abandoned`` | bool | the user left the conversation after this answer without resolving it |
| ``escalated`` | bool | the conversation was handed to a human agent after this answer |
| ``resolved`` | bool | the user or agent marked the conversation resolved after this answer |
| ``entities`` | string | canonical JSON (``dump_entities``) of the answer's entities on the **redacted** ``text`` |

``entities`` is ``[{"start", "end", "type", "value", "confidence"}, ...]``: character offsets into
``text`` (``end`` exclusive), ``value == text[start:end]``, sorted by start; ``"[]"`` for none.

How ``flywheel export-events`` (``model/collect/export.py``) fills it from the conversation store:

- **Answered** means both of KServe's logger events are there (request and response, joined on
  ``ce-id``) and the response carries a prediction for the text. A request whose response never
  came (the model failed, or the event was lost) or a response without its request is left out and
  counted in the export's result (``skipped``): without a text or a prediction there is nothing to
  learn from or to compare.
- **Several texts in one request** (a V1 ``instances`` list or a V2 ``text`` tensor of N > 1): one
  row per text, with request id ``<ce-id>/<i>`` (``i`` from 0), so ``request_id`` stays unique and
  each row keeps its own prediction. A single-text request (what a chat front end sends) keeps the
  plain ``ce-id``. Feedback naming ``<ce-id>`` applies to every text of the request;
  ``<ce-id>/<i>`` to that text only.
- ``conversation_id`` is the front end's ``X-Conversation-Id`` header (forwarded by the logger in
  ``ce-metadata``); a request without one is a conversation of its own (``conversation_id`` = its
  ``ce-id``), so the column is never empty.
- ``arm`` is what the collector attributed when the answer arrived: the answer's model version
  looked up in the environment's ConfigMap ``flywheel-arms`` (``model/collect/arms.py``; KServe's
  ``ce-endpoint`` is empty and a revision cannot know its share), ``unknown`` when it named neither
  arm. ``latency_ms`` is response ``ce-time`` minus request
  ``ce-time``.
- Feedback events refer to a request id or a conversation id. One naming a request applies to that
  request; one naming only a conversation applies to the conversation's last answered request at
  or before the feedback's time (in the exported window), so each row says what happened after
  *that* answer. ``thumbs`` is the latest thumbs event's verdict; ``abandoned``, ``escalated``
  and ``resolved`` are true once any such event arrived. Feedback matching no exported row
  (its request is outside the window) is counted, not guessed.
- Texts are what the collector stored: redacted at ingestion, before the store.
- ``entities`` come from the answer (V1 ``predictions[i].entities``, V2 output ``entities``), whose
  offsets point into the raw text the model saw: each is moved onto the redacted text by the
  redaction's offset map (``data_checks.pii.redacted_span``), and one that overlaps redacted personal
  data is dropped (counted in ``skipped``), so a value is never personal data. Answers without
  entities (a model trained without them, events stored before entities existed) give ``"[]"``.

The file's metadata holds the content digest (sha256 of the rows in request-id order) and the
window (``flywheel.window_start``/``flywheel.window_end``, ISO 8601), so a training run or a drift
check names exactly the data it read (``snapshot_info``).

``read_snapshot`` reads a snapshot written before ``entities`` existed as if every row had none
(``"[]"``); every other column must be there.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from model.core.errors import FlywheelError
from model.core.files import replacing
from model.data.readers import read_parquet

SNAPSHOT_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("conversation_id", pa.string(), nullable=False),
        pa.field("timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("predicted_intent", pa.string(), nullable=False),
        pa.field("confidence", pa.float64(), nullable=False),
        pa.field("fallback", pa.bool_(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("arm", pa.string(), nullable=False),
        pa.field("latency_ms", pa.float64(), nullable=False),
        pa.field("thumbs", pa.string(), nullable=False),
        pa.field("abandoned", pa.bool_(), nullable=False),
        pa.field("escalated", pa.bool_(), nullable=False),
        pa.field("resolved", pa.bool_(), nullable=False),
        pa.field("entities", pa.string(), nullable=False),
    ]
)
COLUMNS = SNAPSHOT_SCHEMA.names
ARMS = ("stable", "canary", "shadow", "unknown")  # unknown: a version no arm named
THUMBS = ("up", "down", "")
DIGEST_KEY = b"flywheel.content_digest"
WINDOW_KEYS = (b"flywheel.window_start", b"flywheel.window_end")
NO_ENTITIES = "[]"
ENTITY_KEYS = ("start", "end", "type", "value", "confidence")  # one entity of the ``entities`` column, in order


def dump_entities(entities: list[dict]) -> str:
    """The canonical ``entities`` cell: compact JSON, sorted by start, keys in ``ENTITY_KEYS`` order."""
    if not entities:  # most answers
        return NO_ENTITIES
    ordered = sorted(entities, key=lambda e: (e["start"], e["end"]))
    return json.dumps([{k: e[k] for k in ENTITY_KEYS} for e in ordered], ensure_ascii=False, separators=(",", ":"))


def read_snapshot(path: str | Path, *, strict: bool = True) -> pd.DataFrame:
    """Read a snapshot, checking that every column is there, without nulls, with a type that converts.

    ``strict=False`` only reads the file and leaves columns and values as they are, for
    ``check-data``, whose expectations then say which column or rows are wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise FlywheelError(f"{path}: no such snapshot file")
    table = read_parquet(path)
    if "entities" not in table.columns:  # written before the column existed: no entities
        table["entities"] = NO_ENTITIES
    if not strict:
        return table
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise FlywheelError(
            f"{path}: snapshot is missing column(s) {', '.join(missing)} "
            "(see model/data/conversations.py for the schema)"
        )
    for name in COLUMNS:
        nulls = table[name].isna().to_numpy()
        if nulls.any():
            first = int(nulls.argmax())
            raise FlywheelError(
                f"{path}: column '{name}' has {int(nulls.sum())} null value(s), "
                f"first in row {first} (request {table['request_id'].iloc[first]!r})"
            )
    try:
        return pa.Table.from_pandas(table[COLUMNS], schema=SNAPSHOT_SCHEMA, preserve_index=False).to_pandas()
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as exc:
        raise FlywheelError(f"{path}: snapshot columns do not match the schema: {exc}") from exc


def write_snapshot(df: pd.DataFrame, path: str | Path, metadata: dict[bytes, bytes] | None = None) -> Path:
    """Write rows as a snapshot with exactly ``SNAPSHOT_SCHEMA`` (through a temporary name).

    ``metadata`` goes into the Parquet schema's key-value metadata (digest, window).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(df[COLUMNS], schema=SNAPSHOT_SCHEMA, preserve_index=False)
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    with replacing(path) as tmp:
        pq.write_table(table, tmp)
    return path


def snapshot_info(path: str | Path, frame: pd.DataFrame | None = None) -> dict:
    """The content digest and the window ``{"start", "end"}`` of a snapshot written by the export.

    A snapshot written another way has no such metadata: the window is then the first and last
    timestamp in ``frame`` (if given) and the digest is empty.
    """
    meta = pq.read_schema(Path(path)).metadata or {}
    start, end = (meta.get(k, b"").decode() for k in WINDOW_KEYS)
    if not (start and end) and frame is not None and len(frame):
        start, end = frame["timestamp"].min().isoformat(), frame["timestamp"].max().isoformat()
    return {"content_digest": meta.get(DIGEST_KEY, b"").decode(), "window": {"start": start, "end": end}}
