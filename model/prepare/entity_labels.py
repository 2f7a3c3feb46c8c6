"""Entity spans through prepare: the types a frame knows, and spans put back onto texts prepare rewrote.

Prepare redacts and normalises every text (``redact``, ``cleaning.normalise``) after the spans were
written against the text as it was, so a span's offsets may no longer fit: ``place_spans`` moves
each span to where its ``value`` now is (the occurrence nearest to where it was, after the spans
before it) and checks the result with ``model.data.entities.check_spans``. A row whose spans
cannot all be placed keeps none of them (``place_column`` counts these rows): half the entities
of a text would teach the model that the other half are not entities.

A frame without an ``entities`` column (intent-only data, a snapshot from before entities) has no
spans: every row reads as ``"[]"``.
"""

from __future__ import annotations

import json
import re

import pandas as pd

from model.core.errors import FlywheelError
from model.data.entities import check_spans, dump_spans, load_spans

COLUMN = "entities"
NONE = "[]"


def cells(frame: pd.DataFrame) -> pd.Series:
    """The frame's ``entities`` cells, ``"[]"`` where it has none (no column, empty or missing cells)."""
    if COLUMN not in frame.columns:
        return pd.Series(NONE, index=frame.index, dtype=object)
    return frame[COLUMN].map(lambda c: c if isinstance(c, str) and c.strip() else NONE)


def types_of(frame: pd.DataFrame) -> set[str]:
    """Every entity type the frame's spans use."""
    return {s["type"] for cell in cells(frame) for s in load_spans(cell)}


def place_spans(text: str, spans: list[dict]) -> list[dict] | None:
    """``spans`` moved onto ``text`` by their values (extra keys such as ``confidence`` kept), or None
    when one of them is no longer in the text or would break a rule of ``check_spans``."""
    placed, cursor, shift = [], 0, 0
    for span in sorted(spans, key=lambda s: (s["start"], s["end"])):
        start, end = span["start"], span["end"]
        value = span.get("value", text[start:end])
        if not value or text[start:end] != value:
            found = _occurrences(text, value, cursor)
            if not found:
                return None
            # the nearest occurrence to where the text before it has moved the span
            start = min(found, key=lambda at: abs(at - (span["start"] + shift)))
            end = start + len(value)
        placed.append({**span, "start": start, "end": end, "value": text[start:end]})
        cursor, shift = end, start - span["start"]
    try:
        check_spans(text, placed, "span")
    except FlywheelError:
        return None
    return placed


def _occurrences(text: str, value: str, cursor: int) -> list[int]:
    """Where ``value`` starts in ``text`` at or after ``cursor``: exact matches, else case-blind ones
    (the same message may have reached prepare in another case)."""
    if not value:
        return []
    pattern = re.escape(value)
    for flags in (0, re.IGNORECASE):
        found = [m.start() for m in re.finditer(pattern, text[cursor:], flags)]
        if found:
            return [cursor + at for at in found]
    return []


def place_column(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """``frame`` with its canonical ``entities`` placed onto its ``text`` and how many rows lost theirs."""
    placed = [place_cell(t, c) for t, c in zip(frame["text"], cells(frame))]
    lost = sum(p is None for p in placed)
    return frame.assign(**{COLUMN: [NONE if p is None else p for p in placed]}), lost


def place_cell(text: str, cell: str) -> str | None:
    """A canonical cell placed onto ``text`` (``place_spans``), or None when its spans do not fit."""
    spans = load_spans(cell)
    if not spans:
        return NONE
    placed = place_spans(text, spans)
    return None if placed is None else dump_spans(placed)


def predicted_column(logs: pd.DataFrame, known: set[str]) -> tuple[pd.Series, int]:
    """The snapshot's predicted entities per row, placed onto the row's (cleaned) text, confidence kept;
    ``"[]"`` for a row with a span that cannot be placed or of a type outside ``known``, and how many
    such rows there were. The snapshot's cells hold ``start, end, type, value, confidence``."""
    out, lost = [], 0
    for text, cell in zip(logs["text"], cells(logs)):
        if cell == NONE:  # most answers: no entity to place
            out.append(NONE)
            continue
        spans = _read_predicted(cell)
        fit = spans is not None and all(s["type"] in known for s in spans)
        placed = place_spans(text, spans) if fit else None
        if placed is None:
            lost += 1
        out.append(_dump_predicted(placed or []))
    return pd.Series(out, index=logs.index, dtype=object), lost


def _read_predicted(cell: str) -> list[dict] | None:
    """The spans of a snapshot cell, or None when it is not a list of spans (it came from elsewhere)."""
    try:
        spans = json.loads(cell)
    except ValueError:
        return None
    shaped = isinstance(spans, list) and all(
        isinstance(s, dict)
        and all(type(s.get(k)) is int for k in ("start", "end"))
        and isinstance(s.get("type"), str)
        and isinstance(s.get("value", ""), str)
        for s in spans
    )
    return spans if shaped else None


def _dump_predicted(spans: list[dict]) -> str:
    keep = ("start", "end", "type", "value", "confidence")
    ordered = sorted(spans, key=lambda s: (s["start"], s["end"]))
    return json.dumps([{k: s[k] for k in keep if k in s} for s in ordered], ensure_ascii=False, separators=(",", ":"))


def canonical(predicted: str) -> str:
    """A predicted cell as a training example's cell: ``dump_spans`` (confidence dropped)."""
    return dump_spans(json.loads(predicted))
