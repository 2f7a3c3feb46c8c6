"""A window of any length exported in flat memory: the store read in batches, feedback folded in and rows
sorted out of core by DuckDB, the snapshot written a row group at a time.

``export_window`` (``model.collect.export``) runs it for every window, in two stages:

1. ``stage``: one server-side cursor over the window's events (``store.stream_inference``), ordered by
   event id so a call's request and response come together. Each answered call becomes its snapshot
   rows by the export's own rules (``snapshot_rows.call_rows``), appended to a temporary Parquet file,
   and the feedback naming any request, text or conversation of the batch (``store.read_feedback``)
   to another. Nothing but the current batch is held in memory.
2. ``fold``: DuckDB (past ``memory_mib`` it spills to disk) applies the feedback as
   ``snapshot_rows.answered_rows`` does: an event naming a request (``<ce-id>``, or ``<ce-id>/<i>`` for
   one text) applies to that request's rows; one naming only a conversation applies to the rows of
   its last answered call at or before the event's time; per row, the latest thumbs event (by time,
   then event id) gives ``thumbs`` and any abandoned/escalated/resolved event sets that flag. The
   rows are then read back in request-id order for the digest (``snapshot_rows.hash_rows``) and in time
   order into the snapshot, ``ROW_GROUP`` rows per Parquet row group, so the file does not depend
   on the batch size either.

``tests/servers/test_scale.py`` checks that a window exported in batches of a few rows is byte for byte
the one exported in a single batch, and that both hold ``answered_rows``' rows.
"""

from __future__ import annotations

import itertools
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from model.collect.snapshot_rows import _utc, call_rows, feedback_ids, hash_rows
from model.collect.store import read_feedback, stream_inference
from model.core.files import replacing
from model.data.conversations import COLUMNS, DIGEST_KEY, SNAPSHOT_SCHEMA

READ_BATCH = 8192  # rows DuckDB hands over at a time
ROW_GROUP = 100_000  # snapshot rows per Parquet row group: about 20 MB of a chat window at a time
STAGED_ROWS = pa.schema([*SNAPSHOT_SCHEMA, pa.field("_call", pa.string(), nullable=False)])
STAGED_FEEDBACK = pa.schema(
    [
        pa.field("event_id", pa.string()),
        pa.field("event_time", pa.timestamp("us", tz="UTC")),
        pa.field("kind", pa.string()),
        pa.field("request_id", pa.string()),
        pa.field("conversation_id", pa.string()),
    ]
)
# What each feedback event names, and what it does to the rows it names (module docstring, step 2).
FOLD_SQL = """
CREATE VIEW r AS SELECT * FROM read_parquet($rows);
CREATE VIEW f AS SELECT DISTINCT ON (event_id) * FROM read_parquet($feedback);
CREATE VIEW by_id AS
    SELECT request_id AS key, request_id FROM r
    UNION ALL SELECT _call, request_id FROM r WHERE request_id <> _call;
CREATE VIEW named AS
    SELECT event_id, request_id AS key FROM f WHERE request_id <> ''
    UNION ALL
    SELECT f.event_id, last(r._call ORDER BY r.timestamp, r._call)
    FROM f JOIN r ON r.conversation_id = f.conversation_id AND r.timestamp <= f.event_time
    WHERE f.request_id = '' GROUP BY f.event_id;
CREATE TABLE hits AS SELECT DISTINCT named.event_id, by_id.request_id FROM named JOIN by_id USING (key);
CREATE TABLE folded AS
    SELECT hits.request_id,
        last(CASE f.kind WHEN 'thumbs_up' THEN 'up' ELSE 'down' END ORDER BY f.event_time, f.event_id)
            FILTER (WHERE f.kind IN ('thumbs_up', 'thumbs_down')) AS thumbs,
        bool_or(f.kind = 'abandoned') AS abandoned,
        bool_or(f.kind = 'escalated') AS escalated,
        bool_or(f.kind = 'resolved') AS resolved
    FROM hits JOIN f USING (event_id) GROUP BY hits.request_id;
CREATE VIEW snapshot AS
    SELECT r.request_id, r.conversation_id, r.timestamp, r.text, r.predicted_intent, r.confidence, r.fallback,
        r.model_version, r.arm, r.latency_ms, coalesce(x.thumbs, '') AS thumbs,
        coalesce(x.abandoned, false) AS abandoned, coalesce(x.escalated, false) AS escalated,
        coalesce(x.resolved, false) AS resolved, r.entities
    FROM r LEFT JOIN folded x USING (request_id);
"""


@dataclass
class Staged:
    """What ``stage`` wrote and counted."""

    rows: Path
    feedback: Path
    requests: int  # calls with an event in the window
    skipped: Counter  # what was left out, and why (``snapshot_rows.answered_rows``' keys)


def stage(engine: sa.Engine, start: datetime, end: datetime, batch: int, folder: Path) -> Staged:
    """Step 1 of the module docstring: the window's rows and the feedback naming them, as two Parquet files."""
    staged = Staged(folder / "rows.parquet", folder / "feedback.parquet", 0, Counter())
    events = itertools.chain.from_iterable(stream_inference(engine, start, end, batch))
    calls = (
        (call_id, {e["kind"]: e for e in group})
        for call_id, group in itertools.groupby(events, lambda e: e["event_id"])
    )
    with (
        pq.ParquetWriter(staged.rows, STAGED_ROWS) as rows_out,
        pq.ParquetWriter(staged.feedback, STAGED_FEEDBACK) as fb_out,
    ):
        while chunk := list(itertools.islice(calls, batch)):
            staged.requests += len(chunk)
            rows, request_ids, conversations = [], set(), set()
            for call_id, pair in chunk:  # a call's rows and the ids naming it, while its parsed bodies are cached
                rows += call_rows(call_id, pair, staged.skipped)
                ids, convs = feedback_ids(list(pair.values()))
                request_ids |= ids
                conversations |= convs
            rows_out.write_table(pa.Table.from_pylist(rows, schema=STAGED_ROWS))
            feedback = read_feedback(engine, request_ids, conversations, chunk=1000)
            fb_out.write_table(pa.Table.from_pylist([_feedback_row(f) for f in feedback], schema=STAGED_FEEDBACK))
    return staged


def _feedback_row(f: dict) -> dict:
    return {**{k: f[k] for k in STAGED_FEEDBACK.names}, "event_time": _utc(f["event_time"])}


def fold_and_write(staged: Staged, out: Path, metadata: dict[bytes, bytes], memory_mib: int) -> dict:
    """Step 2 of the module docstring: the snapshot written to ``out`` (through a temporary name) with
    ``metadata`` plus its content digest; returns the digest and the counts the export reports."""
    import duckdb

    spill = staged.rows.parent / "spill"
    config = {"memory_limit": f"{memory_mib}MB", "temp_directory": str(spill), "preserve_insertion_order": False}
    with duckdb.connect(str(staged.rows.parent / "fold.duckdb"), config=config) as con:
        con.execute("SET TimeZone = 'UTC'")
        con.execute(FOLD_SQL.replace("$rows", _quoted(staged.rows)).replace("$feedback", _quoted(staged.feedback)))
        ((unmatched,),) = con.execute(
            "SELECT count(*) FROM f WHERE event_id NOT IN (SELECT event_id FROM hits)"
        ).fetchall()
        ((rows, rated, with_feedback),) = con.execute(
            "SELECT count(*), count(*) FILTER (WHERE thumbs <> ''), "
            "count(*) FILTER (WHERE thumbs <> '' OR abandoned OR escalated OR resolved) FROM snapshot"
        ).fetchall()
        digest = hash_rows(row for part in _sorted(con, "request_id") for row in part.to_pylist())
        schema = SNAPSHOT_SCHEMA.with_metadata({**metadata, DIGEST_KEY: digest.encode()})
        with replacing(out) as tmp, pq.ParquetWriter(tmp, schema) as writer:
            for group in _row_groups(_sorted(con, "timestamp, request_id")):
                writer.write_table(group.replace_schema_metadata(schema.metadata))
    if unmatched:
        staged.skipped["feedback_without_answer"] += unmatched
    return {"content_digest": digest, "rows": rows, "rated": rated, "with_feedback": with_feedback}


def _quoted(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _sorted(con, order: str) -> Iterator[pa.Table]:
    """The snapshot's rows in ``order``, a DuckDB vector batch at a time, with exactly its schema."""
    reader = con.sql(f"SELECT {', '.join(COLUMNS)} FROM snapshot ORDER BY {order}").to_arrow_reader(READ_BATCH)
    for part in reader:
        yield pa.Table.from_batches([part]).cast(SNAPSHOT_SCHEMA)


def _row_groups(parts: Iterator[pa.Table]) -> Iterator[pa.Table]:
    """``parts`` regrouped into tables of ``ROW_GROUP`` rows (the last one shorter)."""
    held: list[pa.Table] = []
    count = 0
    for part in parts:
        held.append(part)
        count += len(part)
        while count >= ROW_GROUP:
            table = pa.concat_tables(held)
            yield table.slice(0, ROW_GROUP)
            rest = table.slice(ROW_GROUP)
            held, count = [rest], len(rest)
    if count:
        yield pa.concat_tables(held)


def export_streamed(
    engine: sa.Engine,
    start: datetime,
    end: datetime,
    out: Path,
    metadata: dict[bytes, bytes],
    batch: int,
    memory_mib: int,
) -> dict:
    """Both stages, in a temporary folder beside ``out`` (the staged files can be as large as the snapshot)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out.parent) as folder:
        staged = stage(engine, start, end, batch, Path(folder))
        written = fold_and_write(staged, out, metadata, memory_mib)
    return {**written, "requests": staged.requests, "skipped": dict(sorted(staged.skipped.items()))}
