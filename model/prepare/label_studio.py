"""The review queue in Label Studio: the labelling config, one task per message with the model's answer
pre-annotated, and a project's JSON export read back into labels.

The shapes are Label Studio's own (its docs: "Import pre-annotated data", section "Import span
pre-annotations for text", docs/source/guide/predictions.md in HumanSignal/label-studio, and "Label
Studio JSON format of annotated tasks", guide/task_format). A task is ``{"data": {...},
"predictions": [{"model_version", "score", "result": [...]}]}``; each result names its control
(``from_name``) and the object it labels (``to_name``):

- the intent, a ``Choices`` result: ``{"type": "choices", "value": {"choices": ["order_status"]}}``;
- an entity, a ``Labels`` span on the ``Text`` object: ``{"id": "r1-e1", "type": "labels", "value":
  {"start": 9, "end": 14, "text": "12345", "labels": ["order_id"], "score": 0.97}}``, ``start``/``end``
  character offsets into ``data.text`` (end exclusive), ``score`` the model's confidence in that span.

The export adds ``annotations`` to each task, oldest first, each ``{"id", "result", "was_cancelled",
...}`` with results of the same shapes. A reviewer who accepts the pre-annotation as it is gets the
prediction's results copied into the annotation (their ``origin`` is ``prediction``; ``prediction-changed``
once edited, ``manual`` for new ones), so an annotation holds every span the reviewer left standing:
one with the intent chosen and no span means the reviewer removed them all, *no entities*.

A project with no entity types (intent-only data) gets no ``Labels`` control and no span results.

A message of an intent nobody has named yet gets the choice ``(new intent)``, which shows a
``TextArea`` named ``new_intent`` (a ``View`` with ``visibleWhen="choice-selected"``) to type its
name in; its result is ``{"type": "textarea", "value": {"text": ["gift wrap"]}}``. A name typed
there is deliberate, so import accepts it as a new intent, normalised by ``intent_name`` ("Gift
wrap" -> ``gift_wrap``), where an unknown value of a fixed choice or of the CSV's ``intent``
column is refused as a typo. The typed name counts only with ``(new intent)`` chosen (text left
in the field after choosing another intent is ignored); ``(new intent)`` with no name is refused.
"""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path
from xml.sax.saxutils import quoteattr

import pandas as pd

from model.core.errors import FlywheelError
from model.data.entities import Span, check_spans
from model.data.readers import read_json
from model.prepare.entity_labels import cells

CONTROL = "intent"  # name of the Choices control in the labelling config; results refer to it
ENTITY_CONTROL = "entities"  # name of the Labels control (only in projects with entity types)
OBJECT = "text"  # name of the Text object both controls label
NEW_INTENT = "(new intent)"  # the choice that shows the name field; no intent can be called this (intent_name)
NEW_INTENT_CONTROL = "new_intent"  # name of the TextArea a new intent's name is typed in


def intent_name(raw: str, where: str) -> str:
    """A typed intent name as the training data spells intents: lower case, words joined by ``_``."""
    words = re.findall(r"[^\W_]+", unicodedata.normalize("NFKC", str(raw)).casefold())
    if not words:
        raise FlywheelError(f"{where}: new intent name {raw!r} has no letters or digits")
    return "_".join(words)


def labelling_config(intents: list[str], entity_types: list[str] = ()) -> str:
    choices = "\n".join(f"    <Choice value={quoteattr(i)}/>" for i in sorted(intents))
    spans = ""
    if entity_types:
        labels = "\n".join(f"    <Label value={quoteattr(t)}/>" for t in sorted(entity_types))
        spans = (
            '  <Header value="Mark each entity: pick its type, then select its characters '
            "(the model's spans are pre-marked; delete the wrong ones)\"/>\n"
            f'  <Labels name="{ENTITY_CONTROL}" toName="{OBJECT}">\n{labels}\n  </Labels>\n'
        )
    return (
        "<View>\n"
        '  <Header value="Which intent is this message? (the model\'s guess is pre-selected)"/>\n'
        f"{spans}"
        f'  <Text name="{OBJECT}" value="$text"/>\n'
        f'  <Choices name="{CONTROL}" toName="{OBJECT}" choice="single" showInline="false">\n{choices}\n'
        f"    <Choice value={quoteattr(NEW_INTENT)}/>\n  </Choices>\n"
        f'  <View visibleWhen="choice-selected" whenTagName="{CONTROL}" whenChoiceValue={quoteattr(NEW_INTENT)}>\n'
        '    <Header value="Name the new intent (a few words; it is stored lower case, joined by _)"/>\n'
        f'    <TextArea name="{NEW_INTENT_CONTROL}" toName="{OBJECT}" maxSubmissions="1" rows="1" editable="true"/>\n'
        "  </View>\n"
        "</View>\n"
    )


def to_tasks(queue: pd.DataFrame, entity_types: list[str] = ()) -> list[dict]:
    """One Label Studio task per queued message, in queue order (most worth labelling first); with
    ``entity_types``, the row's predicted ``entities`` (of those types) as span pre-annotations."""
    tasks = []
    predicted = cells(queue)
    for rank, (row, entities) in enumerate(zip(queue.itertuples(index=False), predicted), 1):
        result = [
            {
                "from_name": CONTROL,
                "to_name": OBJECT,
                "type": "choices",
                "value": {"choices": [row.predicted_intent]},
            }
        ]
        if entity_types:
            result += _span_results(json.loads(entities), set(entity_types), rank)
        tasks.append(
            {
                "data": {
                    "text": row.text,
                    "rank": rank,
                    "predicted_intent": row.predicted_intent,
                    "confidence": round(float(row.confidence), 4),
                    "traffic": int(row.traffic),
                    **({"cluster": int(row.cluster)} if hasattr(row, "cluster") else {}),
                    "reasons": row.reasons,
                    "conversation_id": row.conversation_id,
                    "request_id": row.request_id,
                    "model_version": row.model_version,
                },
                "predictions": [
                    {
                        "model_version": str(row.model_version),
                        "score": round(float(row.confidence), 4),
                        "result": result,
                    }
                ],
            }
        )
    return tasks


def _span_results(spans: list[dict], types: set[str], rank: int) -> list[dict]:
    results = []
    for n, span in enumerate((s for s in spans if s["type"] in types), 1):
        value = {"start": span["start"], "end": span["end"], "text": span["value"], "labels": [span["type"]]}
        if "confidence" in span:
            value["score"] = round(float(span["confidence"]), 4)
        # Label Studio wants every result id unique; rank and position make it so within the file
        results.append(
            {"id": f"r{rank}-e{n}", "from_name": ENTITY_CONTROL, "to_name": OBJECT, "type": "labels", "value": value}
        )
    return results


def read_export(path: Path) -> list[tuple[str, str, list[Span], str, bool]]:
    """``(text, intent, spans, where, typed)`` per labelled task of a Label Studio JSON export.

    A task's label is its latest non-cancelled annotation that chose an intent (Label Studio lists
    annotations oldest first); that annotation's spans are the task's entities. A task nobody
    labelled is left out. A span whose offsets do not fit its text is refused, naming the task.
    ``typed``: the intent is a new one's name typed in (module docstring), already normalised.
    """
    tasks = read_json(path)
    if not isinstance(tasks, list):
        raise FlywheelError(f"{path}: expected a list of Label Studio tasks, got {type(tasks).__name__}")
    rows = []
    for n, task in enumerate(tasks):
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict) or "text" not in task["data"]:
            raise FlywheelError(f"{path}: task {n} has no data.text")
        where = f"task {task.get('id', n)}"
        text = str(task["data"]["text"])
        chosen = None
        for annotation in task.get("annotations") or []:
            if isinstance(annotation, dict) and not annotation.get("was_cancelled"):
                results = [r for r in annotation.get("result") or [] if isinstance(r, dict)]
                choice = _choice(results)
                if choice is not None:
                    chosen = (choice, results)
        if chosen is not None:
            choice, results = chosen
            typed = choice == NEW_INTENT
            if typed:
                choice = intent_name(_typed(results, f"{path}: {where}"), f"{path}: {where}")
            rows.append((text, choice, _spans(text, results, f"{path}: {where}"), where, typed))
    return rows


def _typed(results: list[dict], where: str) -> str:
    for result in results:
        value = result.get("value")
        if result.get("from_name") == NEW_INTENT_CONTROL and isinstance(value, dict):
            text = value.get("text")
            typed = " ".join(map(str, text)) if isinstance(text, list) else str(text or "")
            if typed.strip():
                return typed
    raise FlywheelError(f"{where}: {NEW_INTENT!r} chosen but no name typed in {NEW_INTENT_CONTROL!r}")


def _choice(results: list[dict]) -> str | None:
    choice = None
    for result in results:
        value = result.get("value")
        if result.get("from_name") == CONTROL and isinstance(value, dict) and value.get("choices"):
            choice = value["choices"][0]
    return choice


def _spans(text: str, results: list[dict], where: str) -> list[Span]:
    spans = []
    for result in results:
        if result.get("from_name") != ENTITY_CONTROL or result.get("type") != "labels":
            continue
        value = result.get("value") if isinstance(result.get("value"), dict) else {}
        labels = value.get("labels")
        if not (isinstance(labels, list) and len(labels) == 1 and isinstance(labels[0], str)):
            raise FlywheelError(f"{where}: span {result.get('id')!r} must carry exactly one label, got {labels!r}")
        span = {"start": value.get("start"), "end": value.get("end"), "type": labels[0]}
        if "text" in value:
            span["value"] = value["text"]
            span = _from_utf16(text, span)
        spans.append(span)
    return check_spans(text, spans, where)


def _from_utf16(text: str, span: dict) -> dict:
    """``span`` with code-point offsets where Label Studio wrote UTF-16 ones.

    Some Label Studio versions count a character outside the Basic Multilingual Plane (an emoji) as
    two (JavaScript string offsets; HumanSignal/label-studio issue #1347): when the offsets miss the
    span's own text but read as UTF-16 offsets they hit it, they are converted; otherwise the span is
    left as it is for ``check_spans`` to refuse.
    """
    start, end = span["start"], span["end"]
    if not (type(start) is int and type(end) is int) or text[start:end] == span["value"]:
        return span
    if all(ord(ch) <= 0xFFFF for ch in text):
        return span
    points, units = [], 0
    for index, ch in enumerate(text):
        points.append((units, index))
        units += 2 if ord(ch) > 0xFFFF else 1
    points.append((units, len(text)))
    by_unit = dict(points)
    if start in by_unit and end in by_unit and text[by_unit[start] : by_unit[end]] == span["value"]:
        return {**span, "start": by_unit[start], "end": by_unit[end]}
    return span
