"""Reading the files people hand the loop: tables (CSV, Parquet, JSON lines) and JSON documents.

One place decides how each format is parsed (CSV cells as strings, JSON lines without type
guessing) and turns every way a file can be unreadable into a ``FlywheelError`` naming the file.
What the rows must hold is each caller's business: training examples (``examples``), conversation
snapshots (``conversations``), the review queue's labels and ``check-data``'s training snapshot.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pandas as pd

from model.core.errors import FlywheelError

TABLE_SUFFIXES = (".csv", ".parquet", ".jsonl")

_Parsed = TypeVar("_Parsed")


def read_table(path: str | Path, *, blanks_as_missing: bool = False) -> pd.DataFrame:
    """A CSV, Parquet or JSON-lines file as it is: no column required, renamed or converted.

    CSV cells are strings and an empty cell is ``""``; with ``blanks_as_missing`` it is missing
    (NaN), as are pandas' other missing-value markers ("NA", "null"), for a check that must tell
    a missing value from an empty one.
    """
    path = _existing(path)
    if path.suffix == ".csv":
        return _parsed(path, "csv", lambda: pd.read_csv(path, dtype=str, keep_default_na=blanks_as_missing))
    if path.suffix == ".parquet":
        return read_parquet(path)
    if path.suffix == ".jsonl":
        return _parsed(path, "jsonl", lambda: pd.read_json(path, lines=True, dtype=False))
    raise FlywheelError(f"{path}: unsupported format '{path.suffix}' (use CSV, Parquet or JSONL)")


def read_parquet(path: str | Path) -> pd.DataFrame:
    """A Parquet file, whatever its name ends in."""
    path = _existing(path)
    return _parsed(path, "parquet", lambda: pd.read_parquet(path))


def read_json(path: str | Path) -> object:
    """A JSON document (a Label Studio export, a CLINC150 file), parsed."""
    path = _existing(path)
    return _parsed(path, "JSON", lambda: json.loads(path.read_text()))


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FlywheelError(f"{path}: no such file")
    return path


def _parsed(path: Path, format_name: str, parse: Callable[[], _Parsed]) -> _Parsed:
    try:
        return parse()
    except pd.errors.EmptyDataError as exc:
        raise FlywheelError(f"{path}: file is empty") from exc
    except Exception as exc:  # noqa: BLE001 - any parser failure means the file is unreadable
        raise FlywheelError(f"{path}: cannot read as {format_name}: {exc}") from exc
