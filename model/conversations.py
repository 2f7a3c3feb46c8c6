"""The conversation snapshot: what the collector exports and ``flywheel prepare`` / ``check-data`` read.

One Parquet file, **one row per answered request** (the "Logged event" contract of DESIGN.md), with
the feedback that refers to it already folded in. The collector writes it; this module is the one
place its schema is defined, so the collector should build its export from ``SNAPSHOT_SCHEMA``.

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
| ``arm`` | string | ``stable``, ``canary`` or ``shadow`` (KServe ``ce-endpoint``, or the shadow copy) |
| ``latency_ms`` | float64 | model latency for this request |
| ``thumbs`` | string | ``up``, ``down`` or ``""`` (not rated) |
| ``abandoned`` | bool | the user left the conversation after this answer without resolving it |
| ``escalated`` | bool | the conversation was handed to a human agent after this answer |
| ``resolved`` | bool | the user or agent marked the conversation resolved after this answer |

Feedback events refer to a request id (thumbs) or a conversation id (abandoned, escalated,
resolved); the collector assigns conversation-level feedback to the conversation's last answered
request before this event, so each row says what happened after *that* answer.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa

from model.errors import FlywheelError

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
    ]
)
COLUMNS = SNAPSHOT_SCHEMA.names
ARMS = ("stable", "canary", "shadow")
THUMBS = ("up", "down", "")
FEEDBACK_FLAGS = ("abandoned", "escalated", "resolved")


def read_snapshot(path: str | Path, *, strict: bool = True) -> pd.DataFrame:
    """Read a snapshot, checking that every column is there, without nulls, with a type that converts.

    ``strict=False`` only reads the file and leaves columns and values as they are, for
    ``check-data``, whose expectations then say which column or rows are wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise FlywheelError(f"{path}: no such snapshot file")
    try:
        table = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - any parser failure means the file is unreadable
        raise FlywheelError(f"{path}: cannot read as Parquet: {exc}") from exc
    if not strict:
        return table
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise FlywheelError(
            f"{path}: snapshot is missing column(s) {', '.join(missing)} (see model/conversations.py for the schema)"
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


def write_snapshot(df: pd.DataFrame, path: str | Path) -> Path:
    """Write rows as a snapshot with exactly ``SNAPSHOT_SCHEMA`` (through a temporary name)."""
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(df[COLUMNS], schema=SNAPSHOT_SCHEMA, preserve_index=False)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return path
