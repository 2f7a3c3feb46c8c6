"""Reading the files people hand the loop: tables (CSV, Parquet, JSON lines) and JSON documents.

One place decides how each format is parsed (CSV cells as strings, JSON lines without type
guessing, JSON documents decoded by ``decode``) and turns every way a file can be unreadable into a
``FlywheelError`` naming the file.
What the rows must hold is each caller's business: training examples (``examples``), conversation
snapshots (``conversations``), the review queue's labels and ``check-data``'s training snapshot.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pandas as pd

from model.core.errors import FlywheelError

TABLE_SUFFIXES = (".csv", ".parquet", ".jsonl")
_C1_CONTROL = re.compile(r"[\x80-\x9f]")  # never in real text; what a wrong single-byte reading yields
_UTF8_SEQUENCE = re.compile(rb"[\xc2-\xdf][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}|[\xf0-\xf4][\x80-\xbf]{3}")

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
    """A JSON document (a Label Studio export, a CLINC150 or SNIPS file), decoded by ``decode``, parsed."""
    path = _existing(path)
    text = decode(path.read_bytes(), path)
    return _parsed(path, "JSON", lambda: json.loads(text))


def decode(data: bytes, path: Path) -> str:
    """The text of a file: UTF-8, else CESU-8, else Latin-1; refused rather than garbled.

    - CESU-8 is UTF-8 whose characters beyond the BMP (emoji) are written as two encoded UTF-16
      surrogates, as Java's and MySQL's "utf8" writers do (SNIPS' ``train_PlayMusic_full.json``
      holds one such emoji among plain UTF-8): each surrogate pair is joined into its character;
      an unpaired surrogate is refused.
    - Latin-1 decodes any bytes, so it is trusted only when no byte becomes a C1 control character
      (U+0080-U+009F, which real text does not hold but Windows-1252 quotes and dashes do) and no
      bytes form a UTF-8 sequence (a file mixing UTF-8 with stray bytes: read as Latin-1, every
      "é" would become "Ã©").
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        utf8_error = exc
    try:
        surrogates = data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        pass
    else:
        try:
            return surrogates.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
        except UnicodeDecodeError:
            raise FlywheelError(
                f"{path}: not UTF-8: an unpaired UTF-16 surrogate at byte {utf8_error.start} (damaged text?)"
            ) from None
    refused = f"{path}: not UTF-8 ({utf8_error.reason} at byte {utf8_error.start}) and not Latin-1 either"
    mixed = _UTF8_SEQUENCE.search(data)
    if mixed:
        raise FlywheelError(
            f"{refused}: bytes {mixed.group().hex(' ')} at {mixed.start()} are UTF-8 (mixed encodings?)"
        )
    text = data.decode("latin-1")
    control = _C1_CONTROL.search(text)
    if control:
        raise FlywheelError(
            f"{refused}: byte 0x{ord(control.group()):02x} at {control.start()} would be a control character "
            "(Windows-1252?); convert the file to UTF-8"
        )
    return text


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
