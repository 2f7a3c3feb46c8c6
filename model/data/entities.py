"""Entity spans on training examples: their one in-table form, the inline form, and their checks.

In a table (CSV, Parquet, JSON lines, the prepared snapshot) an example's entities are one column,
``entities``: a JSON list of objects ``{"start": 9, "end": 14, "type": "order_id", "value": "12345"}``,
character offsets into ``text`` (``end`` exclusive), ``value`` optional on input and always
``text[start:end]`` when given. An empty cell, ``[]`` or a missing column means no entities. In
memory the column holds the canonical JSON (``dump_spans``: sorted by start, ``value`` filled in)
so rows stay hashable and compare by content.

Hand-written data may use the inline form Rasa reads, ``where is order [12345](order_id)?``
(``parse_inline``): the brackets and the type are removed from the text and become a span. It is
read where a row's ``entities`` cell is empty (or the column missing); a cell that is ``[]`` says
the row has no entities and its text is taken as it is (a logged message may hold a Markdown link),
and a row with both spans in its cell and inline marks is refused.

A span must lie inside the text, cover non-blank characters, not overlap another and not touch a
redaction placeholder (``<EMAIL>``, ``<CARD>``, ...): a placeholder is what replaced personal data,
never a value a bot could act on.

When a text is edited (stripped, normalised), ``follow_edit`` moves its spans along.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import TypedDict

from model.core.errors import FlywheelError

PLACEHOLDER = re.compile(r"<[A-Z][A-Z_]*>")  # what data_checks.pii writes in place of personal data
ENTITY_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")  # becomes part of a BIO tag name: no spaces
# [value](type), the type a name as above: "[here](https://...)" is a Markdown link, not an entity
_INLINE = re.compile(r"\[([^\[\]]+)\]\((" + ENTITY_TYPE.pattern + r")\)")
_SENTINEL = "\x00"  # what follow_edit appends to a prefix: no edit of chat text removes or merges it


class _Refused(ValueError):
    """A cell or span that cannot be an entity; the callers add where it was."""


class Span(TypedDict):
    start: int
    end: int
    type: str
    value: str


def span_problem(text: str, span: dict) -> str | None:
    """Why ``span`` cannot be an entity of ``text``, or None when it can."""
    start, end, kind = span.get("start"), span.get("end"), span.get("type")
    if not (isinstance(start, int) and isinstance(end, int)) or isinstance(start, bool) or isinstance(end, bool):
        return f"start and end must be integers, got {start!r} and {end!r}"
    if not isinstance(kind, str) or not ENTITY_TYPE.fullmatch(kind):
        return f"type {kind!r} is not a name (letters, digits, _ . -; starting with a letter)"
    if not 0 <= start < end <= len(text):
        return f"offsets [{start}, {end}) do not lie inside the text ({len(text)} characters)"
    covered = text[start:end]
    if "value" in span and span["value"] != covered:
        return f"claims {span['value']!r} but the text at [{start}, {end}) is {covered!r}"
    if covered != covered.strip():
        return f"{covered!r} at [{start}, {end}) starts or ends with white space"
    for match in PLACEHOLDER.finditer(text):
        if match.start() < end and start < match.end():
            return f"{covered!r} at [{start}, {end}) touches the placeholder {match.group()}"
    return None


def check_spans(text: str, spans: list[dict], where: str) -> list[Span]:
    """``spans`` validated against ``text`` and canonical (sorted, ``value`` filled), or FlywheelError."""
    try:
        return _checked(text, spans)
    except _Refused as exc:
        raise FlywheelError(f"{where}: {exc}") from None


def parse_cell(cell: object, text: str, where: str) -> list[Span]:
    """The spans of one ``entities`` cell (JSON text, a list, or empty), checked against ``text``."""
    try:
        return _cell_spans(cell, text)
    except _Refused as exc:
        raise FlywheelError(f"{where}: {exc}") from None


def cell_problem(cell: object, text: str) -> str | None:
    """Why an ``entities`` cell does not fit ``text``, or None when it does (``check-data``'s row check)."""
    try:
        _cell_spans(cell, text)
    except _Refused as exc:
        return str(exc)
    return None


def is_blank(cell: object) -> bool:
    """An empty cell: no ``entities`` given (a missing value, ``""``), as opposed to ``[]``, none."""
    return cell is None or (isinstance(cell, float) and cell != cell) or (isinstance(cell, str) and not cell.strip())


def _cell_spans(cell: object, text: str) -> list[Span]:
    if is_blank(cell):
        return []
    if isinstance(cell, str):
        try:
            cell = json.loads(cell)
        except ValueError as exc:
            raise _Refused(f"'entities' is not JSON: {exc}") from None
    if hasattr(cell, "tolist"):  # Parquet lists arrive as numpy arrays
        cell = cell.tolist()
    if not isinstance(cell, list):
        raise _Refused(f"'entities' must be a JSON list of spans, got {type(cell).__name__}")
    # a Parquet struct's missing field (no "value" given) arrives as None
    spans = [{k: v for k, v in s.items() if v is not None} if hasattr(s, "items") else s for s in cell]
    return _checked(text, spans)


def _checked(text: str, spans: list) -> list[Span]:
    out: list[Span] = []
    for span in spans:
        if not isinstance(span, dict):
            raise _Refused(f"an entity must be an object with start, end, type; got {span!r}")
        problem = span_problem(text, span)
        if problem:
            raise _Refused(f"entity {span.get('type')!r}: {problem}")
        out.append(
            Span(start=span["start"], end=span["end"], type=span["type"], value=text[span["start"] : span["end"]])
        )
    out.sort(key=lambda s: (s["start"], s["end"]))
    for a, b in zip(out, out[1:]):
        if b["start"] < a["end"]:
            raise _Refused(f"entities {a['value']!r} ({a['type']}) and {b['value']!r} ({b['type']}) overlap")
    return out


def dump_spans(spans: list[Span]) -> str:
    """The canonical ``entities`` cell: compact JSON, sorted, ``[]`` for none."""
    ordered = sorted(spans, key=lambda s: (s["start"], s["end"]))
    return json.dumps(
        [{"start": s["start"], "end": s["end"], "type": s["type"], "value": s["value"]} for s in ordered],
        ensure_ascii=False,
        separators=(",", ":"),
    )


def load_spans(cell: str) -> list[Span]:
    """A canonical cell back to spans (trusted: it was checked when it was written)."""
    return json.loads(cell) if cell else []


def parse_inline(marked: str, where: str = "text") -> tuple[str, list[Span]]:
    """``"order [12345](order_id) is late"`` to ``("order 12345 is late", [span of 12345])``."""
    plain, spans, last = [], [], 0
    length = 0
    for match in _INLINE.finditer(marked):
        before = marked[last : match.start()]
        plain.append(before)
        length += len(before)
        value, kind = match.group(1), match.group(2)
        spans.append({"start": length, "end": length + len(value), "type": kind})
        plain.append(value)
        length += len(value)
        last = match.end()
    plain.append(marked[last:])
    text = "".join(plain)
    return text, check_spans(text, spans, where)


def has_inline(text: str) -> bool:
    return _INLINE.search(text) is not None


def follow_edit(edit: Callable[[str], str], text: str, spans: list[Span]) -> tuple[str, list[Span], int]:
    """``edit(text)``, the spans moved along with it, and how many spans the edit destroyed (dropped).

    ``edit`` must act locally, as stripping and normalising Unicode and white space do: a span's
    new start is the length of the edited text before it, found by editing that prefix with a
    sentinel appended (so trailing white space is not stripped), likewise its end. A span is kept
    only where its new characters are ``edit`` of its old ones and it is still a valid span.
    """
    new = edit(text)
    kept: list[Span] = []
    for span in spans:
        start, end = _edited_length(edit, text[: span["start"]]), _edited_length(edit, text[: span["end"]])
        moved = {"start": start, "end": end, "type": span["type"], "value": edit(span["value"])}
        if start is None or end is None or span_problem(new, moved):
            continue
        kept.append(Span(start=start, end=end, type=span["type"], value=moved["value"]))
    return new, kept, len(spans) - len(kept)


def _edited_length(edit: Callable[[str], str], prefix: str) -> int | None:
    out = edit(prefix + _SENTINEL)
    return len(out) - 1 if out.endswith(_SENTINEL) else None
