"""The review queue: answers a human should label, out as Label Studio tasks and CSV, back in as labels.

Which answers: those the user or the bot said went wrong (thumbs down, escalated, abandoned, fallback),
least confident first (``order_queue``).

Export (``write_queue``) writes three files into one folder:

- ``review_tasks.json``: Label Studio tasks (``data.text`` plus context, and the model's answer as a
  pre-annotation in ``predictions``), importable as-is into a project using ``review_config.xml``;
- ``review_config.xml``: the labelling interface (one ``Choices`` control named ``intent``);
- ``review_queue.csv``: the same rows for a spreadsheet, with an empty ``intent`` column to fill.

Import (``read_labels``) takes either Label Studio's JSON export of that project (each task's
latest non-cancelled annotation wins) or the CSV with ``intent`` filled in.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from xml.sax.saxutils import quoteattr

import pandas as pd

from model.core.errors import FlywheelError
from model.data.readers import read_json, read_table

CONTROL = "intent"  # name of the Choices control in the labelling config; results refer to it
QUEUE_COLUMNS = [
    "text",
    "predicted_intent",
    "confidence",
    "traffic",
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


def labelling_config(intents: list[str]) -> str:
    choices = "\n".join(f"    <Choice value={quoteattr(i)}/>" for i in sorted(intents))
    return (
        "<View>\n"
        '  <Header value="Which intent is this message? (the model\'s guess is pre-selected)"/>\n'
        '  <Text name="text" value="$text"/>\n'
        f'  <Choices name="{CONTROL}" toName="text" choice="single" showInline="false">\n{choices}\n  </Choices>\n'
        "</View>\n"
    )


def to_tasks(queue: pd.DataFrame) -> list[dict]:
    """One Label Studio task per queued message, in queue order (most worth labelling first)."""
    tasks = []
    for rank, row in enumerate(queue.itertuples(index=False), 1):
        tasks.append(
            {
                "data": {
                    "text": row.text,
                    "rank": rank,
                    "predicted_intent": row.predicted_intent,
                    "confidence": round(float(row.confidence), 4),
                    "traffic": int(row.traffic),
                    "reasons": row.reasons,
                    "conversation_id": row.conversation_id,
                    "request_id": row.request_id,
                    "model_version": row.model_version,
                },
                "predictions": [
                    {
                        "model_version": str(row.model_version),
                        "score": round(float(row.confidence), 4),
                        "result": [
                            {
                                "from_name": CONTROL,
                                "to_name": "text",
                                "type": "choices",
                                "value": {"choices": [row.predicted_intent]},
                            }
                        ],
                    }
                ],
            }
        )
    return tasks


def write_queue(queue: pd.DataFrame, folder: Path, intents: list[str]) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {
        "label_studio_tasks": folder / "review_tasks.json",
        "label_studio_config": folder / "review_config.xml",
        "csv": folder / "review_queue.csv",
    }
    out["label_studio_tasks"].write_text(json.dumps(to_tasks(queue), indent=1, ensure_ascii=False) + "\n")
    out["label_studio_config"].write_text(labelling_config(intents))
    queue.assign(intent="").reindex(columns=QUEUE_COLUMNS).to_csv(out["csv"], index=False, quoting=csv.QUOTE_MINIMAL)
    return {k: str(v) for k, v in out.items()}


def read_labels(path: Path, allowed: set[str]) -> pd.DataFrame:
    """Human labels as ``text, intent`` rows; an intent outside ``allowed`` is refused, naming it."""
    path = Path(path)
    if not path.is_file():
        raise FlywheelError(f"{path}: no such labels file")
    if path.suffix == ".json":
        rows = _read_label_studio(path)
    elif path.suffix == ".csv":
        rows = _read_csv(path)
    else:
        raise FlywheelError(f"{path}: labels must be Label Studio JSON (.json) or CSV (.csv)")
    df = pd.DataFrame(rows, columns=["text", "intent", "where"])
    df["text"] = df["text"].astype(str).str.strip()
    df["intent"] = df["intent"].astype(str).str.strip()
    empty = df[df["text"] == ""]
    if not empty.empty:
        raise FlywheelError(f"{path}: labelled item with empty text at {empty['where'].iloc[0]}")
    unknown = df[~df["intent"].isin(allowed)]
    if not unknown.empty:
        listed = ", ".join(f"'{i}' ({w})" for i, w in unknown[["intent", "where"]].head(5).itertuples(index=False))
        raise FlywheelError(
            f"{path}: unknown intent(s) {listed}; known intents are the training set's, "
            f"or declare a new one with --new-intents"
        )
    return df[["text", "intent"]].reset_index(drop=True)


def _read_label_studio(path: Path) -> list[tuple[str, str, str]]:
    tasks = read_json(path)
    if not isinstance(tasks, list):
        raise FlywheelError(f"{path}: expected a list of Label Studio tasks, got {type(tasks).__name__}")
    rows = []
    for n, task in enumerate(tasks):
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict) or "text" not in task["data"]:
            raise FlywheelError(f"{path}: task {n} has no data.text")
        annotations = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
        choice = None
        for annotation in annotations:  # Label Studio lists them oldest first; the latest wins
            for result in annotation.get("result") or []:
                if result.get("from_name") == CONTROL and result.get("value", {}).get("choices"):
                    choice = result["value"]["choices"][0]
        if choice is not None:
            rows.append((task["data"]["text"], choice, f"task {task.get('id', n)}"))
    return rows


def _read_csv(path: Path) -> list[tuple[str, str, str]]:
    df = read_table(path)
    missing = [c for c in ("text", "intent") if c not in df.columns]
    if missing:
        raise FlywheelError(f"{path}: missing column(s) {', '.join(missing)}")
    return [(t, i, f"line {n + 2}") for n, (t, i) in enumerate(zip(df["text"], df["intent"])) if i.strip()]
