"""The review queue: answers a human should label, out as Label Studio tasks and CSV, back in as labels.

Which answers: those the user or the bot said went wrong (thumbs down, escalated, abandoned, fallback),
least confident first (``order_queue``), taken in turns from clusters of similar messages
(``model.prepare.clusters``; the ``cluster`` column, ``-1`` for one-offs). Next to the queue,
``model.prepare.discovery`` writes the clusters as candidate new intents, each named in one decision.

Export (``write_queue``) writes three files into one folder:

- ``review_tasks.json``: Label Studio tasks (``data.text`` plus context, and the model's answer, its
  intent and entity spans, as a pre-annotation in ``predictions``), importable as-is into a project
  using ``review_config.xml`` (shapes: ``model.prepare.label_studio``);
- ``review_config.xml``: the labelling interface (a ``Choices`` control named ``intent`` and, when the
  training set has entity types, a ``Labels`` control named ``entities``);
- ``review_queue.csv``: the same rows for a spreadsheet, with an empty ``intent`` column to fill and,
  when there are entity types, an ``entities`` column holding the model's spans to correct.

Import (``read_labels``) takes either Label Studio's JSON export of that project (each task's latest
non-cancelled annotation with an intent wins, with its spans) or the CSV with ``intent`` filled in.
An intent outside the known and declared ones is refused as a typo, unless it was typed as a new
intent's name in Label Studio's ``new_intent`` field (``model.prepare.label_studio``): deliberate.
In the CSV, entities are the optional ``entities`` column only, in the training format's JSON
(``model.data.entities``: ``[{"start": 9, "end": 14, "type": "order_id", "value": "12345"}]``,
offsets into that row's ``text``, empty or ``[]`` for none); a CSV without the column labels no
entities. As in Label Studio, a pre-filled ``entities`` cell left as it is accepts the model's
spans. The inline form ``[12345](order_id)`` is for hand-written training data, not for labels: a
label text holding an inline mark (``[value](name)``; a Markdown link's URL is no name) is refused,
since it could be either the message as the user wrote it or a span.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pandas as pd

from model.core.errors import FlywheelError
from model.data.entities import ENTITY_TYPE, dump_spans, parse_cell
from model.data.readers import read_table
from model.prepare.entity_labels import COLUMN as ENTITIES
from model.prepare.entity_labels import canonical, cells
from model.prepare.label_studio import labelling_config, read_export, to_tasks

QUEUE_COLUMNS = [
    "text",
    "predicted_intent",
    "confidence",
    "traffic",
    "cluster",
    "reasons",
    "conversation_id",
    "request_id",
    "model_version",
    "intent",
]


def needs_review(logs: pd.DataFrame) -> pd.Series:
    """Answers a human should look at: the user or the bot said it went wrong."""
    return (logs["thumbs"] == "down") | logs["escalated"] | logs["abandoned"] | logs["fallback"]


def review_reasons(row) -> str:
    reasons = [
        name
        for name, hit in (
            ("thumbs_down", row.thumbs == "down"),
            ("escalated", row.escalated),
            ("abandoned", row.abandoned),
            ("fallback", row.fallback),
        )
        if hit
    ]
    return ";".join(reasons)


def review_candidates(logs: pd.DataFrame) -> pd.DataFrame:
    """The answers that need review, each with its ``reasons`` (in ``logs``' order; see ``order_queue``)."""
    candidates = logs[needs_review(logs)].copy()
    candidates["reasons"] = [review_reasons(r) for r in candidates.itertuples(index=False)]
    return candidates


def order_queue(queue: pd.DataFrame) -> pd.DataFrame:
    """Most worth labelling first: least confident (to the hundredth), then most frequent."""
    return (
        queue.assign(_conf=queue["confidence"].round(2))
        .sort_values(["_conf", "traffic", "text"], ascending=[True, False, True], kind="stable")
        .drop(columns="_conf")
        .reset_index(drop=True)
    )


def write_queue(queue: pd.DataFrame, folder: Path, intents: list[str], entity_types: list[str] = ()) -> dict[str, str]:
    """The queue's three files (module docstring); without ``entity_types`` exactly the intent-only ones."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {
        "label_studio_tasks": folder / "review_tasks.json",
        "label_studio_config": folder / "review_config.xml",
        "csv": folder / "review_queue.csv",
    }
    tasks = to_tasks(queue, entity_types)
    out["label_studio_tasks"].write_text(json.dumps(tasks, indent=1, ensure_ascii=False) + "\n")
    out["label_studio_config"].write_text(labelling_config(intents, entity_types))
    table = queue.assign(intent="").reindex(columns=QUEUE_COLUMNS)
    if entity_types:  # the model's spans of known types, for the reviewer to correct in place
        table[ENTITIES] = [_known_spans(canonical(c), set(entity_types)) for c in cells(queue)]
    table.to_csv(out["csv"], index=False, quoting=csv.QUOTE_MINIMAL)
    return {k: str(v) for k, v in out.items()}


def _known_spans(cell: str, types: set[str]) -> str:
    return dump_spans([s for s in json.loads(cell) if s["type"] in types])


def read_labels(path: Path, allowed: set[str], entity_types: set[str] = frozenset()) -> pd.DataFrame:
    """Human labels as ``text, intent, entities`` rows (``entities``: canonical JSON, ``"[]"`` for none).

    An intent outside ``allowed`` or an entity type outside ``entity_types`` is refused, naming it
    and where it is; so is a span whose offsets do not fit its text. A new intent's name typed in
    Label Studio is accepted (module docstring).
    """
    path = Path(path)
    if not path.is_file():
        raise FlywheelError(f"{path}: no such labels file")
    if path.suffix == ".json":
        rows = read_export(path)
    elif path.suffix == ".csv":
        rows = _read_csv(path)
    else:
        raise FlywheelError(f"{path}: labels must be Label Studio JSON (.json) or CSV (.csv)")
    rows = [(*_stripped(str(t), str(i), spans, w), typed) for t, i, spans, w, typed in rows]
    df = pd.DataFrame(rows, columns=["text", "intent", "spans", "where", "typed"])
    empty = df[df["text"] == ""]
    if not empty.empty:
        raise FlywheelError(f"{path}: labelled item with empty text at {empty['where'].iloc[0]}")
    unknown = df[~df["intent"].isin(allowed) & ~df["typed"].astype(bool)]
    if not unknown.empty:
        listed = ", ".join(f"'{i}' ({w})" for i, w in unknown[["intent", "where"]].head(5).itertuples(index=False))
        raise FlywheelError(
            f"{path}: unknown intent(s) {listed}; known intents are the training set's, "
            f"or declare a new one with --new-intents"
        )
    strange = [(s["type"], w) for spans, w in zip(df["spans"], df["where"]) for s in spans]
    strange = [(t, w) for t, w in strange if t not in entity_types]
    if strange:
        listed = ", ".join(f"'{t}' ({w})" for t, w in strange[:5])
        raise FlywheelError(
            f"{path}: unknown entity type(s) {listed}; known entity types are the training set's, "
            f"or declare a new one with --new-entity-types"
        )
    df[ENTITIES] = df["spans"].map(dump_spans)
    return df[["text", "intent", ENTITIES]].reset_index(drop=True)


def _stripped(text: str, intent: str, spans: list, where: str) -> tuple[str, str, list, str]:
    """The label with its text stripped of surrounding blanks and its spans moved along with it."""
    lead = len(text) - len(text.lstrip())
    moved = [{**s, "start": s["start"] - lead, "end": s["end"] - lead} for s in spans]
    return text.strip(), intent.strip(), moved, where


def _read_csv(path: Path) -> list[tuple[str, str, list, str, bool]]:
    df = read_table(path)
    missing = [c for c in ("text", "intent") if c not in df.columns]
    if missing:
        raise FlywheelError(f"{path}: missing column(s) {', '.join(missing)}")
    entities = df[ENTITIES] if ENTITIES in df.columns else pd.Series("", index=df.index)
    rows = []
    for n, (text, intent, cell) in enumerate(zip(df["text"], df["intent"], entities)):
        if not intent.strip():
            continue
        where = f"line {n + 2}"
        marked = _inline_mark(text)
        if marked:
            raise FlywheelError(
                f"{path}: {where}: text has the inline entity mark {marked!r}; in labels, entities go in the "
                f"'{ENTITIES}' column as JSON spans (and the text stays as the user wrote it)"
            )
        rows.append((text, intent, parse_cell(cell, text, f"{path}: {where}"), where, False))
    return rows


_INLINE = re.compile(r"\[[^\[\]]+\]\(([^()\s]+)\)")  # the form model.data.entities.parse_inline reads


def _inline_mark(text: str) -> str | None:
    """The first ``[value](type)`` in ``text`` whose type is a name (a Markdown link's URL is not one)."""
    for match in _INLINE.finditer(text):
        if ENTITY_TYPE.fullmatch(match.group(1)):
            return match.group()
    return None
