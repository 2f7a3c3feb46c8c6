"""The spool: events the collector acknowledged while the store could not take them, kept on its disk
until the store can, oldest first.

KServe's logger sends each event once: its worker logs a failed send and moves on, whatever the
status (kserve ``pkg/logger/worker.go``, ``sendHttpCloudEvent``). So an event the store cannot take
now is either kept here or refused (503), never acknowledged and dropped.

A SQLite file through the standard library's ``sqlite3``: WAL journal and ``synchronous=FULL``, so a
row is on disk when ``append`` returns and a process killed mid-write leaves the file as it was
before that transaction. Rows keep arrival order in an AUTOINCREMENT key, which SQLite never hands
out twice, even after the rows before it were deleted. The collector writes the oldest rows to the
store and deletes them only after the store committed: a crash between the two writes them again,
which the store's idempotent insert (event id plus request/response) ignores.

Bounded by the bytes of the rows it holds (``max_bytes``): a row that would pass the cap is not
kept. The file itself is a little larger (pages, the WAL); ``auto_vacuum=FULL`` gives the pages of
written rows back to the disk. One process per folder (an exclusive ``flock``): two collectors
sharing a spool would count it wrong.
"""

from __future__ import annotations

import fcntl
import json
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa

from model.collect.store import TABLES
from model.core.errors import FlywheelError

SPOOL_FILE = "spool.db"
_DATETIME_COLUMNS = {
    name: tuple(c.name for c in table.columns if isinstance(c.type, sa.DateTime)) for name, table in TABLES.items()
}


@dataclass(frozen=True)
class Spooled:
    seq: int  # arrival order, never reused
    table: str  # a key of model.collect.store.TABLES
    row: dict


class Spool:
    """Rows for the store, in arrival order, on disk; ``events`` and ``bytes`` say what it holds now,
    ``full`` that it refused a row for room and has not had rows taken out since."""

    def __init__(self, folder: str | Path, max_bytes: int):
        self.folder, self.max_bytes = Path(folder), int(max_bytes)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._lock_file = open(self.folder / "spool.lock", "a")  # noqa: SIM115 - held until close()
        except OSError as exc:
            raise FlywheelError(f"cannot use spool folder {self.folder}: {exc}") from exc
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise FlywheelError(f"spool folder {self.folder} is in use by another collector") from None
        self._lock = threading.Lock()  # one connection, used by the append and the drain threads in turn
        self._db = sqlite3.connect(self.folder / SPOOL_FILE, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA auto_vacuum=FULL")  # takes effect on a new file, before its first table
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS spool (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
            " tbl TEXT NOT NULL, row TEXT NOT NULL, bytes INTEGER NOT NULL)"
        )
        self.events, self.bytes = self._db.execute("SELECT count(*), coalesce(sum(bytes), 0) FROM spool").fetchone()
        self.full = False  # it refused a row for room, and nothing was written to the store since

    def room(self) -> int:
        return max(0, self.max_bytes - self.bytes)

    def append(self, items: list[tuple[str, dict]]) -> list[bool]:
        """Keep the rows that fit under the cap, in order, in one transaction (one fsync); says which were kept."""
        encoded = [(table, _encode(row)) for table, row in items]
        with self._lock:
            room, kept, rows = self.room(), [], []
            for table, text in encoded:
                size = len(text.encode())
                fits = size <= room
                if fits:
                    rows.append((table, text, size))
                    room -= size
                kept.append(fits)
                self.full = self.full or not fits
            if rows:
                with self._transaction():
                    self._db.executemany("INSERT INTO spool (tbl, row, bytes) VALUES (?, ?, ?)", rows)
                self.events += len(rows)
                self.bytes += sum(size for _, _, size in rows)
        return kept

    def oldest(self, limit: int) -> list[Spooled]:
        with self._lock:
            found = self._db.execute("SELECT seq, tbl, row FROM spool ORDER BY seq LIMIT ?", (limit,)).fetchall()
        return [Spooled(seq, table, _decode(table, text)) for seq, table, text in found]

    def remove_through(self, seq: int) -> None:
        """Delete the rows up to ``seq``: once the store has committed them."""
        with self._lock:
            with self._transaction():
                events, size = self._db.execute(
                    "SELECT count(*), coalesce(sum(bytes), 0) FROM spool WHERE seq <= ?", (seq,)
                ).fetchone()
                self._db.execute("DELETE FROM spool WHERE seq <= ?", (seq,))
            self.events -= events
            self.bytes -= size
            self.full = self.full and not size

    def _transaction(self):
        return _Transaction(self._db)

    def close(self) -> None:
        with self._lock:
            self._db.close()
        self._lock_file.close()  # releases the flock


class _Transaction:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, _exc, _tb):
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


def _encode(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False, default=_iso)


def _iso(value):
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} cannot be spooled")


def _decode(table: str, text: str) -> dict:
    row = json.loads(text)
    for name in _DATETIME_COLUMNS[table]:
        if isinstance(row.get(name), str):
            row[name] = datetime.fromisoformat(row[name])
    return row
