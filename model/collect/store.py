"""The conversation store: logged inference events and user feedback, in any SQLAlchemy database.

A SQLite file by default (WAL journal, ``synchronous=FULL`` unless configured otherwise: a committed
event survives a crash and a power cut), PostgreSQL in production. Events are stored as they arrive,
keyed by their CloudEvent id (plus request/response for inference events), so a redelivered event
is a no-op; the join of a request with its response happens when reading, which makes arrival order
irrelevant.

Writes go through ``GroupCommitWriter`` (an ``AsyncBatcher`` of rows): concurrent events are inserted
in one transaction and each caller is answered only after that transaction committed, so many events
share one fsync. ``store_unavailable`` tells a store that cannot be reached (the collector then
spools, ``model.collect.spool``) from one that answered and refused a row.
"""

from __future__ import annotations

import typing
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from model.core.batching import AsyncBatcher
from model.core.config import CollectorConfig
from model.core.errors import FlywheelError

metadata = sa.MetaData()

inference_events = sa.Table(
    "inference_events",
    metadata,
    sa.Column("event_id", sa.String(200), primary_key=True),  # ce-id: the request id, shared by request and response
    sa.Column("kind", sa.String(8), primary_key=True),  # "request" or "response"
    sa.Column("event_time", sa.DateTime(timezone=True), nullable=False, index=True),  # ce-time, else arrival
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("source", sa.String(500), nullable=False),
    sa.Column("inference_service", sa.String(200), nullable=False, default=""),
    sa.Column("namespace", sa.String(200), nullable=False, default=""),
    sa.Column("component", sa.String(100), nullable=False, default=""),
    sa.Column("endpoint", sa.String(100), nullable=False, default=""),  # ce-endpoint: empty from real KServe
    sa.Column("metadata_json", sa.Text, nullable=False, default="{}"),  # ce-metadata: forwarded request headers
    sa.Column("content_type", sa.String(100), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    # added later: ADDED_COLUMNS below brings an older store up to date when it opens
    sa.Column("arm", sa.String(10), nullable=False, default="", server_default=""),  # model.collect.arms
    sa.Column("body_is_json", sa.Boolean, nullable=False, default=True, server_default=sa.true()),  # else raw text
    # a request's redaction map (model.collect.redaction): "" for a response, or a request stored before it
    sa.Column("redactions", sa.Text, nullable=False, default="", server_default=""),
)

feedback_events = sa.Table(
    "feedback_events",
    metadata,
    sa.Column("event_id", sa.String(200), primary_key=True),
    sa.Column("event_time", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("source", sa.String(500), nullable=False),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("request_id", sa.String(200), nullable=False, default="", index=True),
    sa.Column("conversation_id", sa.String(200), nullable=False, default="", index=True),
    sa.Column("comment", sa.Text, nullable=False, default=""),
)

TABLES = {"inference": inference_events, "feedback": feedback_events}
# columns a store made by an earlier version lacks; each has a server default, so old rows read as before
ADDED_COLUMNS = {"inference_events": ("arm", "body_is_json", "redactions")}


SQLITE_SYNC_MODES = typing.get_args(typing.get_type_hints(CollectorConfig)["sqlite_synchronous"])


# libpq waits for the OS's TCP timeout (minutes) on a host that does not answer; a store that is down
# should fail a connection in seconds, so the collector spools instead of holding KServe's logger
PG_CONNECT_TIMEOUT_S = 5


def open_store(url: str | None, sqlite_synchronous: str = "FULL") -> Engine:
    """An engine on the store, with the tables created; SQLite gets WAL and fsync on commit (FULL).

    With NORMAL, SQLite in WAL mode still loses nothing when the process is killed, but a power cut
    or OS crash can lose the last commits.
    """
    engine = store_engine(url, sqlite_synchronous)
    try:
        create_tables(engine)
    except sa.exc.SQLAlchemyError as exc:
        where = engine.url.render_as_string(hide_password=True)
        raise FlywheelError(f"cannot open store {where}: {exc}") from exc
    return engine


def store_engine(url: str | None, sqlite_synchronous: str = "FULL") -> Engine:
    """An engine on the store, without connecting: a URL or setting that is wrong is a FlywheelError here,
    a database that is down only fails the first statement (``create_tables``)."""
    if not url:
        raise FlywheelError("no store URL (collect.store_url; the CLI defaults it to the work folder's SQLite file)")
    if sqlite_synchronous.upper() not in SQLITE_SYNC_MODES:
        raise FlywheelError(
            f"sqlite_synchronous {sqlite_synchronous!r}: expected one of {', '.join(SQLITE_SYNC_MODES)}"
        )
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise FlywheelError(f"store URL {url!r} is not a SQLAlchemy URL: {exc}") from exc
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={sqlite_synchronous.upper()}")
            cur.close()
    elif parsed.get_backend_name() == "postgresql":
        engine = sa.create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": PG_CONNECT_TIMEOUT_S})
    else:
        raise FlywheelError(f"store URL {url!r}: only sqlite and postgresql are supported")
    return engine


def create_tables(engine: Engine) -> None:
    """The tables, created if missing and brought up to date (``ADDED_COLUMNS``); SQLAlchemyError if the store fails."""
    metadata.create_all(engine)
    _add_missing_columns(engine)


def store_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the store could not be reached or used at all (down, restarting, unreachable,
    out of connections, SQLite's file locked or unwritable), rather than that it refused a row.

    PEP 249's OperationalError is "errors related to the database's operation and not necessarily
    under the control of the programmer"; psycopg raises it for a refused or lost connection and for
    an administrator's shutdown (SQLSTATE classes 08, 57), and SQLAlchemy flags a connection it had to
    drop (``connection_invalidated``).
    """
    if isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.DisconnectionError)):
        return True
    if isinstance(exc, sa.exc.TimeoutError):  # no connection free in the pool in time
        return True
    return isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated


def _add_missing_columns(engine: Engine) -> None:
    """``ALTER TABLE ... ADD COLUMN`` for each of ``ADDED_COLUMNS`` an existing table lacks."""
    inspector = sa.inspect(engine)
    for table_name, names in ADDED_COLUMNS.items():
        present = {c["name"] for c in inspector.get_columns(table_name)}
        table = metadata.tables[table_name]
        for name in names:
            if name in present:
                continue
            column = table.c[name]
            ddl = sa.schema.CreateColumn(column).compile(dialect=engine.dialect)
            with engine.begin() as conn:
                conn.execute(sa.text(f"ALTER TABLE {table_name} ADD COLUMN {ddl}"))


def _insert(engine: Engine, table: sa.Table):
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    keys = [c.name for c in table.primary_key.columns]
    return dialect.insert(table).on_conflict_do_nothing(index_elements=keys).returning(*table.primary_key.columns), keys


class GroupCommitWriter:
    """Inserts rows for concurrent callers in shared transactions; ``await write()`` returns after commit.

    Returns True when the row was new, False when it was already stored (a redelivery). A transaction
    the store refused is retried row by row, so one bad row cannot fail its neighbours; one that failed
    because the store is unavailable is not (each row would only wait for the same failure).
    """

    def __init__(self, engine: Engine, max_batch: int = 512):
        self.engine = engine
        self._statements = {name: _insert(engine, table) for name, table in TABLES.items()}
        self._batcher = AsyncBatcher(
            self.commit,
            max_batch_size=max_batch,
            retry_alone=lambda exc: not store_unavailable(exc),
            thread_name="flywheel-store",
        )

    async def write(self, table: str, row: dict) -> bool:
        return await self._batcher.submit((table, row))

    def commit(self, batch: list[tuple[str, dict]]) -> list[bool]:
        """One transaction for the whole batch, run on the caller's thread; which rows were new comes
        back from RETURNING."""
        new_keys: set[tuple] = set()
        with self.engine.begin() as conn:
            for name in {table for table, _ in batch}:
                insert = self._statements[name][0]
                for returned in conn.execute(insert, [row for table, row in batch if table == name]):
                    new_keys.add((name, *returned))
        out = []
        for table, row in batch:
            key = (table, *(row[k] for k in self._statements[table][1]))
            out.append(key in new_keys)
            new_keys.discard(key)  # the same event twice in one batch: only the first counts as new
        return out

    def close(self) -> None:
        self._batcher.close(wait=True)  # a commit in flight finishes before the engine is disposed


def count_rows(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one() for name, t in TABLES.items()
        }


def read_inference(engine: Engine, start: datetime, end: datetime) -> list[dict]:
    """Request and response events of every call with at least one event timed in [start, end)."""
    ie = inference_events
    ids = sa.select(ie.c.event_id).where(ie.c.event_time >= start, ie.c.event_time < end).distinct()
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(ie).where(ie.c.event_id.in_(ids)))]


def stream_inference(engine: Engine, start: datetime, end: datetime, batch: int) -> Iterator[list[dict]]:
    """``read_inference``'s events, ordered by event id then kind (a call's events next to each other),
    ``batch`` at a time from one server-side cursor (PostgreSQL; SQLite's cursors read lazily anyway)."""
    ie = inference_events
    ids = sa.select(ie.c.event_id).where(ie.c.event_time >= start, ie.c.event_time < end)
    query = sa.select(ie).where(ie.c.event_id.in_(ids)).order_by(ie.c.event_id, ie.c.kind)
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=batch).execute(query)
        names = list(result.keys())
        for part in result.partitions():
            yield [dict(zip(names, row)) for row in part]


def read_response(engine: Engine, request_id: str) -> dict | None:
    """The stored response event of a request id (``<ce-id>/<i>`` names text i of ``<ce-id>``), if any."""
    ie = inference_events
    candidates = [request_id] + ([request_id.rsplit("/", 1)[0]] if "/" in request_id else [])
    with engine.connect() as conn:
        for event_id in candidates:
            row = conn.execute(sa.select(ie).where(ie.c.event_id == event_id, ie.c.kind == "response")).first()
            if row is not None:
                return dict(row._mapping)
    return None


def read_feedback(engine: Engine, request_ids: set[str], conversation_ids: set[str], chunk: int = 500) -> list[dict]:
    """Feedback that refers to any of these requests or conversations."""
    fe, found = feedback_events, {}
    with engine.connect() as conn:
        for column, values in (
            (fe.c.request_id, sorted(request_ids - {""})),
            (fe.c.conversation_id, sorted(conversation_ids - {""})),
        ):
            for i in range(0, len(values), chunk):
                for r in conn.execute(sa.select(fe).where(column.in_(values[i : i + chunk]))):
                    found[r.event_id] = dict(r._mapping)
    return list(found.values())
