"""The review queue's recheck section: labels the label check flagged (``model.prepare.label_check``),
out for a second look, and the second looks back in as confirmed labels.

Export (``write_recheck``), into the review folder beside the queue's files:

- ``recheck.csv``: one row per flagged label: ``text``, ``given_intent`` (the label as given),
  ``suggested_intent`` (the check's classifier's guess), ``given_probability`` (its out-of-sample
  probability of the given label), ``source`` (human or auto), ``conversation_id``, ``recheck``
  (``yes``) and an empty ``intent`` to fill; with entity types, also the row's ``entities``;
- ``recheck_tasks.json``: the same rows as Label Studio tasks for the queue's project
  (``review_config.xml``), the given label pre-selected, ``data.recheck`` true and the suggestion
  in ``data.suggested_intent``.

Confirming is labelling again: pass the filled-in ``recheck.csv`` (alone, or its rows appended to a
labels CSV, ``recheck`` column kept) or the Label Studio export holding the recheck tasks as
``flywheel prepare --labels``. A row whose ``recheck`` cell says yes, or a task whose
``data.recheck`` is true, that has a label is a *second look* (``second_look_texts``): the intent
written there (the given one to keep it, another one to relabel) is trained on and never flagged
again. Where a text has two labels in one file, the later one wins, as for any labels file: put the
recheck rows last (Label Studio exports tasks in import order, so recheck tasks imported after the
first ones already are).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd

from model.core.errors import FlywheelError
from model.data.readers import read_json, read_table
from model.prepare.entity_labels import COLUMN as ENTITIES
from model.prepare.entity_labels import cells
from model.prepare.label_studio import to_tasks

RECHECK_COLUMNS = [
    "text",
    "given_intent",
    "suggested_intent",
    "given_probability",
    "source",
    "conversation_id",
    "recheck",
    "intent",
]
YES = {"yes", "y", "true", "1"}  # what a spreadsheet user may type into the recheck column


def write_recheck(flagged: pd.DataFrame, folder: Path, entity_types: list[str] = ()) -> dict[str, str]:
    """``recheck.csv`` and ``recheck_tasks.json`` for the ``flagged`` rows (``LabelCheck.flagged``),
    least likely label first; both written, empty, when nothing was flagged, so a stale file never
    stays behind."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {"recheck_csv": folder / "recheck.csv", "recheck_tasks": folder / "recheck_tasks.json"}
    rows = flagged.sort_values(["given_probability", "text"], kind="stable").reset_index(drop=True)
    table = rows.assign(given_intent=rows["intent"], recheck="yes", intent="").reindex(columns=RECHECK_COLUMNS)
    if entity_types:  # the row's spans as given, for the reviewer to keep or correct
        table[ENTITIES] = cells(rows).tolist()
    table.to_csv(out["recheck_csv"], index=False, quoting=csv.QUOTE_MINIMAL)
    out["recheck_tasks"].write_text(json.dumps(_tasks(rows, entity_types), indent=1, ensure_ascii=False) + "\n")
    return {k: str(v) for k, v in out.items()}


def _tasks(rows: pd.DataFrame, entity_types: list[str]) -> list[dict]:
    """The queue's task shape (``label_studio.to_tasks``) with the given label as the pre-annotation."""
    as_queue = rows.assign(
        predicted_intent=rows["intent"],
        confidence=rows["given_probability"],
        traffic=1,
        reasons="recheck",
        request_id="",
        model_version="label-check",
    )
    tasks = to_tasks(as_queue, entity_types)
    for task, row in zip(tasks, rows.itertuples(index=False)):
        task["data"].update(
            recheck=True, given_intent=row.intent, suggested_intent=row.suggested_intent, source=row.source
        )
    return tasks


def second_look_texts(path: Path) -> set[str]:
    """The texts a labels file labels from the recheck section (module docstring), as written there."""
    path = Path(path)
    if path.suffix == ".csv":
        df = read_table(path)
        if "recheck" not in df.columns:
            return set()
        marked = df["recheck"].str.strip().str.lower().isin(YES) & (df["intent"].str.strip() != "")
        return set(df.loc[marked, "text"].str.strip())
    if path.suffix == ".json":
        tasks = read_json(path)
        if not isinstance(tasks, list):
            raise FlywheelError(f"{path}: expected a list of Label Studio tasks, got {type(tasks).__name__}")
        return {
            str(t["data"]["text"]).strip()
            for t in tasks
            if isinstance(t, dict)
            and isinstance(t.get("data"), dict)
            and t["data"].get("recheck") is True
            and _annotated(t)
        }
    return set()


def _annotated(task: dict) -> bool:
    """Someone submitted a label on the task (an annotation not cancelled, with results)."""
    return any(
        isinstance(a, dict) and not a.get("was_cancelled") and a.get("result") for a in task.get("annotations") or []
    )
