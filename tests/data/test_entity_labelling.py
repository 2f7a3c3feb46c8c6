"""Entities through the review queue and the labels: span pre-annotations in Label Studio's format,
a Label Studio export and the CSV read back, human and auto labels carrying spans into the training
set, the simulated reviewer answering with true spans, and intent-only data left exactly as it was."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest

from model.core.config import DataConfig, PiiConfig, PrepareConfig
from model.core.errors import FlywheelError
from model.data.conversations import write_snapshot
from model.data.entities import dump_spans
from model.loop import annotator
from model.prepare.entity_labels import place_spans
from model.prepare.label_studio import labelling_config, to_tasks
from model.prepare.labelling import label
from model.prepare.review_queue import QUEUE_COLUMNS, read_labels, write_queue
from model.prepare.steps import prepare_step
from tests.helpers.data import write_subset
from tests.helpers.registry import local_registry
from tests.helpers.snapshots import event, make_snapshot

NO_MLFLOW = PrepareConfig(log_to_mlflow=False)
TYPES = ["amount", "order_id"]


def span(text: str, value: str, kind: str, **extra) -> dict:
    start = text.index(value)
    return {"start": start, "end": start + len(value), "type": kind, "value": value, **extra}


def predicted(text: str, *pairs: tuple[str, str], confidence: float = 0.9) -> str:
    """A snapshot cell (contract: start, end, type, value, confidence) for ``(value, type)`` pairs."""
    return json.dumps([span(text, v, k, confidence=confidence) for v, k in pairs])


def queue_rows(texts_and_entities: list[tuple[str, str]]) -> pd.DataFrame:
    n = len(texts_and_entities)
    return pd.DataFrame(
        {
            "text": [t for t, _ in texts_and_entities],
            "predicted_intent": "order_status",
            "confidence": [0.4 + 0.01 * i for i in range(n)],
            "traffic": 1,
            "reasons": "thumbs_down",
            "conversation_id": [f"c{i}" for i in range(n)],
            "request_id": [f"r{i}" for i in range(n)],
            "model_version": "3",
            "entities": [e for _, e in texts_and_entities],
        }
    )


# --- Label Studio: config and tasks -----------------------------------------------------------------


def test_intent_only_config_and_tasks_are_exactly_the_old_ones():
    # what review_config.xml and review_tasks.json held before entities existed, for the same queue
    # (the config since with the new-intent choice and its name field, model.prepare.label_studio)
    old_config = (
        "<View>\n"
        '  <Header value="Which intent is this message? (the model\'s guess is pre-selected)"/>\n'
        '  <Text name="text" value="$text"/>\n'
        '  <Choices name="intent" toName="text" choice="single" showInline="false">\n'
        '    <Choice value="cancel_order"/>\n'
        '    <Choice value="order_status"/>\n'
        '    <Choice value="(new intent)"/>\n'
        "  </Choices>\n"
        '  <View visibleWhen="choice-selected" whenTagName="intent" whenChoiceValue="(new intent)">\n'
        '    <Header value="Name the new intent (a few words; it is stored lower case, joined by _)"/>\n'
        '    <TextArea name="new_intent" toName="text" maxSubmissions="1" rows="1" editable="true"/>\n'
        "  </View>\n"
        "</View>\n"
    )
    assert labelling_config(["order_status", "cancel_order"]) == old_config
    text = "where is order 12345"
    queue = queue_rows([(text, predicted(text, ("12345", "order_id")))])
    old_task = {
        "data": {
            "text": text,
            "rank": 1,
            "predicted_intent": "order_status",
            "confidence": 0.4,
            "traffic": 1,
            "reasons": "thumbs_down",
            "conversation_id": "c0",
            "request_id": "r0",
            "model_version": "3",
        },
        "predictions": [
            {
                "model_version": "3",
                "score": 0.4,
                "result": [
                    {
                        "from_name": "intent",
                        "to_name": "text",
                        "type": "choices",
                        "value": {"choices": ["order_status"]},
                    }
                ],
            }
        ],
    }
    # no entity types: predicted spans (or none, or no column at all) change nothing
    assert to_tasks(queue) == [old_task]
    assert to_tasks(queue.drop(columns="entities")) == [old_task]


def test_intent_only_queue_files_are_the_old_ones(tmp_path):
    queue = queue_rows([("where is my parcel", "[]")]).drop(columns="entities")
    written = write_queue(queue, tmp_path / "review", ["order_status"])
    csv = pd.read_csv(written["csv"], dtype=str, keep_default_na=False)
    assert list(csv.columns) == QUEUE_COLUMNS
    assert (tmp_path / "review" / "review_config.xml").read_text() == labelling_config(["order_status"])
    assert "Labels" not in (tmp_path / "review" / "review_config.xml").read_text()


def test_tasks_pre_annotate_predicted_spans_as_label_studio_labels():
    first = "order 55120 was charged $25.99 twice"
    second = "where is my parcel"
    third = "refund for ORD-20931 please"
    queue = queue_rows(
        [
            (first, predicted(first, ("55120", "order_id"), ("$25.99", "amount"), confidence=0.8123)),
            (second, "[]"),
            (third, json.dumps([span(third, "ORD-20931", "tracking_number", confidence=0.7)])),  # not a known type
        ]
    )
    tasks = to_tasks(queue, TYPES)
    results = tasks[0]["predictions"][0]["result"]
    assert results[0] == {
        "from_name": "intent",
        "to_name": "text",
        "type": "choices",
        "value": {"choices": ["order_status"]},
    }
    spans = results[1:]
    assert [s["value"]["labels"] for s in spans] == [["order_id"], ["amount"]]
    for result in spans:
        assert set(result) == {"id", "from_name", "to_name", "type", "value"}
        assert (result["from_name"], result["to_name"], result["type"]) == ("entities", "text", "labels")
        value = result["value"]
        assert set(value) == {"start", "end", "text", "labels", "score"}
        assert first[value["start"] : value["end"]] == value["text"]  # character offsets into data.text
        assert value["score"] == 0.8123
    ids = [r["id"] for t in tasks for r in t["predictions"][0]["result"] if "id" in r]
    assert len(ids) == len(set(ids)) == 2  # unique ids; the unknown type's span is not offered
    assert tasks[1]["predictions"][0]["result"] == tasks[2]["predictions"][0]["result"] == results[:1]


def test_config_has_a_labels_control_per_entity_type_on_the_text():
    view = ET.fromstring(labelling_config(["order_status", "refund_status"], ["order_id", "amount"]))
    (labels,) = view.iter("Labels")
    assert labels.attrib == {"name": "entities", "toName": "text"}
    assert [label.attrib["value"] for label in labels.iter("Label")] == ["amount", "order_id"]
    (text,) = view.iter("Text")
    assert text.attrib == {"name": "text", "value": "$text"}
    (choices,) = view.iter("Choices")
    assert choices.attrib["name"] == "intent" and choices.attrib["toName"] == "text"
    assert [c.attrib["value"] for c in choices.iter("Choice")] == ["order_status", "refund_status", "(new intent)"]


# --- Label Studio: reading an export back ------------------------------------------------------------


def _annotation(n: int, task_id: int, result: list[dict], cancelled: bool = False) -> dict:
    """One annotation as Label Studio's JSON export writes it (guide/task_format)."""
    return {
        "id": 1000 + n,
        "completed_by": 1,
        "result": result,
        "was_cancelled": cancelled,
        "ground_truth": False,
        "created_at": f"2026-11-21T10:0{n}:00.000000Z",
        "updated_at": f"2026-11-21T10:0{n}:00.000000Z",
        "lead_time": 7.5,
        "result_count": 0,
        "task": task_id,
        "project": 3,
        "parent_prediction": task_id,
        "parent_annotation": None,
    }


def _choice(intent: str, origin: str = "prediction") -> dict:
    return {
        "value": {"choices": [intent]},
        "id": "ch",
        "from_name": "intent",
        "to_name": "text",
        "type": "choices",
        "origin": origin,
    }


def _label(text: str, value: str, kind: str, rid: str, origin: str = "manual") -> dict:
    start = text.index(value)
    return {
        "value": {"start": start, "end": start + len(value), "text": value, "labels": [kind]},
        "id": rid,
        "from_name": "entities",
        "to_name": "text",
        "type": "labels",
        "origin": origin,
    }


def _export(tasks: list[dict], annotations: dict[int, list[dict]]) -> list[dict]:
    out = []
    for n, task in enumerate(tasks):
        task_id = 40 + n
        out.append(
            {
                "id": task_id,
                **task,
                "annotations": annotations.get(n, []),
                "drafts": [],
                "meta": {},
                "created_at": "2026-11-21T09:00:00.000000Z",
                "updated_at": "2026-11-21T10:00:00.000000Z",
                "inner_id": n + 1,
                "total_annotations": len(annotations.get(n, [])),
                "cancelled_annotations": sum(a["was_cancelled"] for a in annotations.get(n, [])),
                "total_predictions": 1,
                "project": 3,
            }
        )
    return out


def test_label_studio_export_round_trips_intents_and_spans(tmp_path):
    texts = [
        "order 55120 was charged $25.99 twice",  # accepted as pre-annotated
        "i paid 40 euros for order 77801",  # intent and one span corrected, one span added
        "refund order 99123 now",  # spans removed: no entities
        "where is order 12345",  # a later annotation was cancelled
        "never labelled 31337",
    ]
    cells = [
        predicted(texts[0], ("55120", "order_id"), ("$25.99", "amount")),
        predicted(texts[1], ("40", "amount")),
        predicted(texts[2], ("99123", "order_id")),
        predicted(texts[3], ("12345", "order_id")),
        predicted(texts[4], ("31337", "order_id")),
    ]
    tasks = to_tasks(queue_rows(list(zip(texts, cells))), TYPES)

    def accepted(n: int) -> list[dict]:  # Label Studio copies the prediction's results, origin "prediction"
        return [{**r, "id": r.get("id", "ch"), "origin": "prediction"} for r in tasks[n]["predictions"][0]["result"]]

    annotations = {
        0: [_annotation(0, 40, accepted(0))],
        1: [
            _annotation(
                1,
                41,
                [
                    _choice("payment_failed", "prediction-changed"),
                    _label(texts[1], "40 euros", "amount", "r2-e1", "prediction-changed"),
                    _label(texts[1], "77801", "order_id", "man1"),
                ],
            )
        ],
        2: [_annotation(2, 42, [_choice("refund_status", "prediction-changed")])],
        3: [
            _annotation(3, 43, [_choice("order_status"), _label(texts[3], "12345", "order_id", "x", "prediction")]),
            _annotation(4, 43, [_choice("cancel_order", "manual")], cancelled=True),
        ],
    }
    path = tmp_path / "export.json"
    path.write_text(json.dumps(_export(tasks, annotations)))
    intents = {"order_status", "payment_failed", "refund_status", "cancel_order"}
    back = read_labels(path, intents, set(TYPES)).set_index("text")
    assert len(back) == 4 and texts[4] not in back.index  # nobody labelled the last task
    expected = {
        texts[0]: ("order_status", [span(texts[0], "55120", "order_id"), span(texts[0], "$25.99", "amount")]),
        texts[1]: ("payment_failed", [span(texts[1], "40 euros", "amount"), span(texts[1], "77801", "order_id")]),
        texts[2]: ("refund_status", []),
        texts[3]: ("order_status", [span(texts[3], "12345", "order_id")]),
    }
    for text, (intent, spans) in expected.items():
        assert back.loc[text, "intent"] == intent
        assert back.loc[text, "entities"] == dump_spans(spans)


def test_a_span_off_its_text_is_refused_naming_the_task(tmp_path):
    text = "where is order 12345"
    tasks = to_tasks(queue_rows([(text, "[]"), (text + " please", "[]")]), TYPES)
    shifted = _label(text, "12345", "order_id", "bad")
    shifted["value"] = {**shifted["value"], "start": 14, "end": 19}  # " 1234": one character early
    path = tmp_path / "export.json"
    path.write_text(json.dumps(_export(tasks, {1: [_annotation(0, 41, [_choice("order_status"), shifted])]})))
    with pytest.raises(FlywheelError, match=r"export\.json: task 41: entity 'order_id': claims '12345'"):
        read_labels(path, {"order_status"}, set(TYPES))
    two = _label(text, "12345", "order_id", "two")
    two["value"]["labels"] = ["order_id", "amount"]
    path.write_text(json.dumps(_export(tasks, {0: [_annotation(0, 40, [_choice("order_status"), two])]})))
    with pytest.raises(FlywheelError, match=r"task 40: span 'two' must carry exactly one label"):
        read_labels(path, {"order_status"}, set(TYPES))


def test_unknown_entity_type_is_refused_unless_declared(tmp_path):
    text = "it cost 12 dollars on order 4411"
    tasks = to_tasks(queue_rows([(text, "[]")]), TYPES)
    result = [_choice("order_status"), _label(text, "12 dollars", "money", "m")]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(_export(tasks, {0: [_annotation(0, 40, result)]})))
    with pytest.raises(FlywheelError, match=r"unknown entity type\(s\) 'money' \(task 40\).*--new-entity-types"):
        read_labels(path, {"order_status"}, set(TYPES))
    back = read_labels(path, {"order_status"}, set(TYPES) | {"money"})
    assert back["entities"].tolist() == [dump_spans([span(text, "12 dollars", "money")])]


def test_utf16_offsets_after_an_emoji_are_read_as_characters(tmp_path):
    text = "\U0001f621 order 55120 never came"
    tasks = to_tasks(queue_rows([(text, "[]")]), TYPES)
    start = text.index("55120")
    # a Label Studio version that counts the emoji as two (JavaScript offsets) writes one more
    utf16 = {"start": start + 1, "end": start + 6, "text": "55120", "labels": ["order_id"]}
    result = [_choice("order_status"), {**_label(text, "55120", "order_id", "e"), "value": utf16}]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(_export(tasks, {0: [_annotation(0, 40, result)]})))
    back = read_labels(path, {"order_status"}, set(TYPES))
    assert back["entities"].tolist() == [dump_spans([span(text, "55120", "order_id")])]


# --- CSV labels ---------------------------------------------------------------------------------------


def test_csv_labels_carry_entities_in_their_column(tmp_path):
    texts = ["  order 55120 was charged twice", "where is my parcel", "see [the faq](https://shop.example/faq)"]
    spans = [dump_spans([span(texts[0], "55120", "order_id")]), "", "[]"]
    path = tmp_path / "labels.csv"
    pd.DataFrame({"text": texts, "intent": ["payment_failed", "order_status", "oos"], "entities": spans}).to_csv(
        path, index=False
    )
    back = read_labels(path, {"payment_failed", "order_status", "oos"}, set(TYPES))
    stripped = texts[0].strip()  # the text is stripped and its span moves with it
    assert back["text"].tolist() == [stripped, texts[1], texts[2]]  # a Markdown link is no inline entity
    assert back["entities"].tolist() == [dump_spans([span(stripped, "55120", "order_id")]), "[]", "[]"]
    # no entities column: no entities
    pd.DataFrame({"text": texts[:1], "intent": ["payment_failed"]}).to_csv(path, index=False)
    assert read_labels(path, {"payment_failed"}, set(TYPES))["entities"].tolist() == ["[]"]


def test_csv_label_with_a_bad_span_or_an_inline_mark_is_refused(tmp_path):
    path = tmp_path / "labels.csv"
    wrong = json.dumps([{"start": 6, "end": 11, "type": "order_id", "value": "55121"}])
    pd.DataFrame(
        {"text": ["order 55120 late", "fine"], "intent": ["order_status"] * 2, "entities": [wrong, ""]}
    ).to_csv(path, index=False)
    with pytest.raises(FlywheelError, match=r"labels\.csv: line 2: entity 'order_id': claims '55121'"):
        read_labels(path, {"order_status"}, set(TYPES))
    pd.DataFrame({"text": ["fine", "where is [55120](order_id)"], "intent": ["order_status"] * 2}).to_csv(
        path, index=False
    )
    with pytest.raises(FlywheelError, match=r"line 3: text has the inline entity mark '\[55120\]\(order_id\)'"):
        read_labels(path, {"order_status"}, set(TYPES))


# --- labelling: human and auto labels -----------------------------------------------------------------


def _logs(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows).assign(traffic=1)


def test_auto_labels_keep_predicted_entities_and_bad_ones_are_dropped_and_counted():
    good = "hi, order 55120 arrived, thanks"
    moved = "hello  order 88812 is here"  # the cleaned text lost a space: the span is found where it now is
    cleaned_moved = "hello order 88812 is here"
    wrong = "order 31337 came"
    alien = "parcel ZX81 came"  # a type the training set does not know
    secret = "order sent to <EMAIL> arrived"  # a placeholder is never an entity
    queued = "my refund of $12.50 for order 44120?"
    logs = _logs(
        [
            {**event(good, "order_status", thumbs="up", i=1), "entities": predicted(good, ("55120", "order_id"))},
            {
                **event(cleaned_moved, "order_status", thumbs="up", i=2),
                "entities": predicted(moved, ("88812", "order_id")),
            },
            {
                **event(wrong, "order_status", thumbs="up", i=3),
                "entities": json.dumps(
                    [{"start": 6, "end": 11, "type": "order_id", "value": "31338", "confidence": 0.6}]
                ),
            },
            {
                **event(alien, "order_status", thumbs="up", i=4),
                "entities": predicted(alien, ("ZX81", "tracking_number")),
            },
            {**event(secret, "order_status", thumbs="up", i=6), "entities": predicted(secret, ("<EMAIL>", "order_id"))},
            {
                **event(queued, "refund_status", thumbs="down", confidence=0.5, i=5),
                "entities": predicted(queued, ("$12.50", "amount"), ("44120", "order_id"), confidence=0.75),
            },
        ]
    )
    base = pd.DataFrame(columns=["text", "intent", "entities", "source", "conversation_id", "split"])
    human = pd.DataFrame(columns=["text", "intent", "entities"])
    known = {"order_status", "refund_status"}
    out = label(base, human, logs, known, PrepareConfig(), set(TYPES))
    auto = out.auto.set_index("text")["entities"]
    assert auto[good] == dump_spans([span(good, "55120", "order_id")])  # confidence dropped
    assert auto[cleaned_moved] == dump_spans([span(cleaned_moved, "88812", "order_id")])
    assert auto[wrong] == auto[alien] == auto[secret] == "[]"  # kept as intent labels, without their spans
    assert out.spans_lost == {"training_set": 0, "human_labels": 0, "predictions": 3}
    assert out.entity_summary() == {"entity_rows_dropped": out.spans_lost}
    # the review candidate keeps the model's spans with their confidence, for the pre-annotation
    review = json.loads(out.review.set_index("text").loc[queued, "entities"])
    assert [(s["value"], s["type"], s["confidence"]) for s in review] == [
        ("$12.50", "amount", 0.75),
        ("44120", "order_id", 0.75),
    ]


def test_a_human_label_replaces_the_seed_rows_intent_and_entities():
    seed = "Order 55120 is late"
    earlier = "parcel for order 66001 missing"
    base = pd.DataFrame(
        {
            "text": [seed, earlier],
            "intent": ["order_status", "missing_item"],
            "entities": [
                dump_spans([span(seed, "55120", "order_id")]),
                dump_spans([span(earlier, "66001", "order_id")]),
            ],
            "source": ["seed", "human"],
            "conversation_id": "",
            "split": "train",
        }
    )
    relabel = "order 55120 is late, i was charged $9.99"  # a new text, with two spans
    human = pd.DataFrame(
        {
            "text": ["order 55120 is late", earlier, relabel],  # the seed text in another case
            "intent": ["order_status", "missing_item", "payment_failed"],
            "entities": [
                "[]",  # the reviewer removed the span
                "[]",  # an earlier human label disagrees: kept
                dump_spans([span(relabel, "55120", "order_id"), span(relabel, "$9.99", "amount")]),
            ],
        }
    )
    logs = _logs([event(relabel, "order_status", thumbs="up", i=7)])
    known = {"order_status", "missing_item", "payment_failed"}
    out = label(base, human, logs, known, PrepareConfig(), set(TYPES))
    rows = out.base.set_index("text")
    assert rows.loc[seed, "entities"] == "[]" and rows.loc[seed, "source"] == "human"
    assert rows.loc[earlier, "entities"] == dump_spans([span(earlier, "66001", "order_id")])
    assert (out.relabelled, out.conflicts) == (1, 1)
    new = out.new_human.set_index("text")
    assert new.loc[relabel, "entities"] == human["entities"].iloc[2] and new.loc[relabel, "intent"] == "payment_failed"
    assert out.auto.empty  # a human labelled it: no auto-label


def test_spans_follow_the_redaction_of_their_text():
    before = "mail jo@example.com about order 55120"
    after = "mail <EMAIL> about order 55120"
    placed = place_spans(after, [span(before, "55120", "order_id")])
    assert placed == [span(after, "55120", "order_id")]
    assert place_spans(after, [span(before, "jo@example.com", "order_id")]) is None  # redacted away


def _intent_only_base(tmp_path, sample_df) -> tuple[Path, pd.DataFrame]:
    base_csv = write_subset(sample_df, tmp_path / "base.csv", n_intents=5)
    base_df = pd.read_csv(base_csv, dtype=str, keep_default_na=False).drop(columns="entities", errors="ignore")
    base_df.to_csv(base_csv, index=False)
    return base_csv, base_df


def test_prepare_carries_human_and_predicted_entities_into_the_training_set_and_queue(tmp_path, sample_df):
    base_csv, base_df = _intent_only_base(tmp_path, sample_df)
    intent = sorted(set(base_df["intent"]) - {"oos"})[0]
    ordered = pd.DataFrame(
        {"text": [f"question about order {55100 + 37 * i} please" for i in range(10)], "intent": intent}
    )
    ordered["entities"] = [dump_spans([span(t, t.split()[3], "order_id")]) for t in ordered["text"]]
    pd.concat([base_df.assign(entities="[]"), ordered], ignore_index=True).to_csv(base_csv, index=False)
    new_text = "my card was charged 40 euros twice for order 99120"
    new_spans = dump_spans([span(new_text, "40 euros", "amount"), span(new_text, "99120", "order_id")])
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"text": [new_text], "intent": [intent], "entities": [new_spans]}).to_csv(labels, index=False)
    trusted, doubtful = "hey, order 99431 came today, thanks", "is order 99432 lost?"
    answers = [
        {**event(trusted, intent, thumbs="up", i=500), "entities": predicted(trusted, ("99431", "order_id"))},
        {
            **event(doubtful, intent, thumbs="down", confidence=0.41, i=501),
            "entities": predicted(doubtful, ("99432", "order_id"), confidence=0.66),
        },
    ]
    logs = pd.concat([make_snapshot(base_df, n=30), pd.DataFrame(answers)], ignore_index=True)
    snapshot = write_snapshot(logs, tmp_path / "snapshot.parquet")
    work = tmp_path / "work"
    kw = {"data_cfg": DataConfig(), "prep_cfg": NO_MLFLOW, "pii_cfg": PiiConfig(), "reg_cfg": local_registry(work)}
    with pytest.raises(FlywheelError, match=r"unknown entity type\(s\) 'amount' \(line 2\)"):
        prepare_step(snapshot, base_csv, labels, tmp_path / "refused", **kw, work=work)
    declared = PrepareConfig(log_to_mlflow=False, new_entity_types=["amount"])
    result, _ = prepare_step(snapshot, base_csv, labels, tmp_path / "out", **kw | {"prep_cfg": declared}, work=work)
    df = pd.read_parquet(tmp_path / "out" / "examples.parquet").set_index("text")
    assert df.loc[new_text, "source"] == "human"
    assert df.loc[new_text, "entities"] == new_spans
    assert df.loc[ordered["text"].iloc[0], "entities"] == ordered["entities"].iloc[0]
    assert df.loc[trusted, "source"] == "auto"
    assert df.loc[trusted, "entities"] == dump_spans([span(trusted, "99431", "order_id")])
    tasks = json.loads((tmp_path / "out" / "review" / "review_tasks.json").read_text())
    (task,) = [t for t in tasks if t["data"]["text"] == doubtful]
    (spans,) = [r["value"] for r in task["predictions"][0]["result"] if r["type"] == "labels"]
    assert spans == {**_label(doubtful, "99432", "order_id", "")["value"], "score": 0.66}
    assert result.labelling["entity_rows_dropped"] == {"training_set": 0, "human_labels": 0, "predictions": 0}
    config = ET.fromstring((tmp_path / "out" / "review" / "review_config.xml").read_text())
    assert [x.attrib["value"] for x in config.iter("Label")] == ["amount", "order_id"]
    csv = pd.read_csv(tmp_path / "out" / "review" / "review_queue.csv", dtype=str, keep_default_na=False)
    assert list(csv.columns) == QUEUE_COLUMNS + ["entities"]
    assert csv.set_index("text").loc[doubtful, "entities"] == dump_spans([span(doubtful, "99432", "order_id")])


def test_prepare_on_intent_only_data_writes_the_old_queue(tmp_path, sample_df):
    base_csv, base_df = _intent_only_base(tmp_path, sample_df)
    snapshot = write_snapshot(make_snapshot(base_df, n=60), tmp_path / "snapshot.parquet")
    work = tmp_path / "work"
    result, _ = prepare_step(
        snapshot, base_csv, None, tmp_path / "out",
        data_cfg=DataConfig(), prep_cfg=NO_MLFLOW, pii_cfg=PiiConfig(), reg_cfg=local_registry(work), work=work,
    )  # fmt: skip
    review = tmp_path / "out" / "review"
    intents = sorted(set(base_df["intent"]) - {"oos"})
    assert (review / "review_config.xml").read_text() == labelling_config(intents)
    tasks = json.loads((review / "review_tasks.json").read_text())
    assert tasks and all([r["type"] for r in t["predictions"][0]["result"]] == ["choices"] for t in tasks)
    assert list(pd.read_csv(review / "review_queue.csv", dtype=str).columns) == QUEUE_COLUMNS
    assert "entity_rows_dropped" not in result.labelling


# --- the simulated reviewer ---------------------------------------------------------------------------


def test_annotator_answers_with_the_true_entities_of_what_it_labels(tmp_path):
    sent = ["order 55120 is late", "call me at +44 20 7946 0958 about order 77120", "where is my parcel"]
    queued = ["order 55120 is late", "call me at <PHONE> about order 77120", "where is my parcel"]
    truth_cells = [
        dump_spans([span(sent[0], "55120", "order_id")]),
        dump_spans([span(sent[1], "77120", "order_id")]),
        "[]",
    ]
    examples = pd.DataFrame({"text": sent, "intent": "order_status", "entities": truth_cells})
    batch = pd.DataFrame({"request_id": ["r0", "r1", "r2"], "text": sent})
    entities = annotator.true_entities([batch], examples)
    items = queue_rows([(t, "[]") for t in queued])  # the model predicted no spans
    truth = {"r0": "order_status", "r1": "order_status", "r2": "order_status"}
    labelled, _ = annotator.label(
        items, truth, ["order_status", "cancel_order"], 0.0, seed=1, entities_by_request=entities
    )
    assert labelled["entities"].tolist() == [
        truth_cells[0],
        dump_spans([span(queued[1], "77120", "order_id")]),  # found again after the redaction
        "[]",
    ]
    path = annotator.write_labels(labelled, tmp_path / "labels.csv")
    back = read_labels(path, {"order_status"}, {"order_id"})
    assert back["entities"].tolist() == labelled["entities"].tolist()
    # intent-only data: no truth to give, and the reviewer's file is the old one
    assert annotator.true_entities([batch], examples.assign(entities="[]")) == {}
    plain, _ = annotator.label(items.drop(columns="entities"), truth, ["order_status"], 0.0, seed=1)
    path = annotator.write_labels(plain, tmp_path / "plain.csv")
    assert list(pd.read_csv(path, dtype=str).columns) == QUEUE_COLUMNS


def test_logs_without_an_entities_column_have_no_predicted_spans():
    # a snapshot from before the entities column: nothing to pre-annotate, nothing to auto-label
    logs = _logs(
        [
            event("where is my parcel", "order_status", thumbs="down", i=1),
            event("order 55120 arrived", "order_status", thumbs="up", i=2),
        ]
    ).drop(columns="entities")
    base = pd.DataFrame(columns=["text", "intent", "source"])
    out = label(base, pd.DataFrame(columns=["text", "intent"]), logs, {"order_status"}, PrepareConfig(), set(TYPES))
    assert out.review["entities"].tolist() == out.auto["entities"].tolist() == ["[]"]
    assert out.spans_lost["predictions"] == 0


def test_without_entity_types_predicted_spans_are_ignored():
    text = "order 55120 arrived, thanks"
    logs = _logs(
        [{**event(text, "order_status", thumbs="up", i=1), "entities": predicted(text, ("55120", "order_id"))}]
    )
    base = pd.DataFrame(columns=["text", "intent", "source"])
    out = label(base, pd.DataFrame(columns=["text", "intent"]), logs, {"order_status"}, PrepareConfig())
    assert out.auto["entities"].tolist() == ["[]"] and out.entity_summary() == {}
    with_types = label(
        base, pd.DataFrame(columns=["text", "intent"]), logs, {"order_status"}, PrepareConfig(), {"order_id"}
    )
    assert with_types.auto["entities"].tolist() == [dump_spans([span(text, "55120", "order_id")])]
