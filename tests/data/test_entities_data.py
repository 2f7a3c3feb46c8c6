"""Data tests for entity spans: the training format (JSON column, inline form), their checks, the
digest, the SNIPS loader and its encodings, check-data and prepare's entity-type report."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from data_checks.validate import EVENTS_SUITE, TRAINING_SUITE, check_data
from model.core.config import SAMPLE_DATA, CheckConfig, DataConfig, PiiConfig, PrepareConfig
from model.core.errors import FlywheelError
from model.data.conversations import write_snapshot
from model.data.entities import dump_spans, follow_edit, load_spans, parse_inline
from model.data.examples import assign_splits, dataset_digest, load_examples, validate_examples
from model.data.readers import decode
from model.prepare.cleaning import normalise
from model.prepare.steps import prepare_step
from tests.helpers.data import write_subset
from tests.helpers.registry import local_registry
from tests.helpers.snapshots import make_snapshot

CFG = DataConfig(min_examples_per_intent=2)
NOW = datetime(2026, 11, 27, tzinfo=UTC)  # the snapshot fixtures' events are from 2026-11-20


def _span(text: str, value: str, kind: str) -> dict:
    start = text.index(value)
    return {"start": start, "end": start + len(value), "type": kind, "value": value}


def _frame() -> pd.DataFrame:
    """Two intents; some rows with entities, one with two, the rest with none."""
    rows = []
    for i in range(4):
        text = f"where is order {10400 + i}, I ordered it on May {i + 2}"
        spans = [_span(text, str(10400 + i), "order_id"), _span(text, f"May {i + 2}", "date")]
        rows.append({"text": text, "intent": "order_status", "entities": json.dumps(spans)})
        rows.append({"text": f"please reset my password, attempt {i}", "intent": "reset_password", "entities": ""})
    return pd.DataFrame(rows)


def _write(df: pd.DataFrame, path: Path) -> Path:
    {
        ".csv": lambda: df.to_csv(path, index=False),
        ".parquet": lambda: df.to_parquet(path, index=False),
        ".jsonl": lambda: df.to_json(path, orient="records", lines=True, force_ascii=False),
    }[path.suffix]()
    return path


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_entities_round_trip_through_every_table_format(tmp_path, suffix):
    df = _frame()
    loaded = load_examples(_write(df, tmp_path / f"data{suffix}"), CFG)
    by_text = dict(zip(loaded["text"], loaded["entities"]))
    for text, cell in zip(df["text"], df["entities"]):
        assert load_spans(by_text[text]) == sorted(json.loads(cell or "[]"), key=lambda s: s["start"])
    assert (loaded.loc[loaded["intent"] == "reset_password", "entities"] == "[]").all()
    # what a loader wrote (canonical cells) reads back identically, in any format
    again = load_examples(_write(loaded, tmp_path / f"again{suffix}"), CFG)
    assert again.equals(loaded)


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_entities_as_native_lists_with_optional_value(tmp_path, suffix):
    """JSON lines and Parquet may hold the spans as lists of objects, not JSON text; ``value`` may be left out."""
    df = _frame()
    df["entities"] = [
        [{k: v for k, v in s.items() if k != "value"} for s in json.loads(c)] if c else [] for c in df["entities"]
    ]
    loaded = load_examples(_write(df, tmp_path / f"native{suffix}"), CFG)
    spans = [s for cell in loaded["entities"] for s in load_spans(cell)]
    assert len(spans) == 8 and all(
        t[s["start"] : s["end"]] == s["value"]
        for t, c in zip(loaded["text"], loaded["entities"])
        for s in load_spans(c)
    )


def test_inline_form_becomes_plain_text_and_spans(tmp_path):
    rows = [
        {"text": "where is order [NW12345](order_id)? it was [$25.99](amount)", "intent": "order_status"},
        {"text": "  track [1Z8V42E10398](tracking_number) please ", "intent": "order_status"},
        {"text": "see [the help page](https://example.org/help) first", "intent": "faq"},  # a Markdown link
        {"text": "a literal [x](y) stays as written", "intent": "faq", "entities": "[]"},
    ]
    path = _write(pd.DataFrame(rows), tmp_path / "inline.csv")
    df = load_examples(path, DataConfig(min_examples_per_intent=1)).set_index("text")
    first = load_spans(df.loc["where is order NW12345? it was $25.99", "entities"])
    assert [(s["type"], s["value"]) for s in first] == [("order_id", "NW12345"), ("amount", "$25.99")]
    assert load_spans(df.loc["track 1Z8V42E10398 please", "entities"])[0]["start"] == 6  # moved with the stripping
    assert df.loc["see [the help page](https://example.org/help) first", "entities"] == "[]"
    assert df.loc["a literal [x](y) stays as written", "entities"] == "[]"
    text, spans = parse_inline("[ORD-1](order_id) and [ORD-2](order_id)")
    assert text == "ORD-1 and ORD-2" and [text[s["start"] : s["end"]] for s in spans] == ["ORD-1", "ORD-2"]


def _bad_row(tmp_path, entities, text) -> str:
    df = _frame()
    df.loc[3, "text"] = text
    df.loc[3, "entities"] = entities if isinstance(entities, str) else json.dumps(entities)
    path = _write(df, tmp_path / "bad.csv")
    with pytest.raises(FlywheelError) as err:
        load_examples(path, CFG)
    message = str(err.value)
    assert str(path) in message and "row 3" in message, message
    return message


@pytest.mark.parametrize(
    ("entities", "text", "fragment"),
    [
        ([{"start": 15, "end": 40, "type": "order_id"}], "where is order 12345", "do not lie inside the text"),
        ([{"start": -1, "end": 3, "type": "order_id"}], "where is order 12345", "do not lie inside the text"),
        ([{"start": 15, "end": 20, "type": "order_id", "value": "12346"}], "where is order 12345", "claims '12346'"),
        (
            [{"start": 9, "end": 20, "type": "order_id"}, {"start": 15, "end": 20, "type": "number"}],
            "where is order 12345",
            "overlap",
        ),
        ([{"start": 12, "end": 19, "type": "email"}], "my email is <EMAIL> ok", "placeholder <EMAIL>"),
        ([{"start": 14, "end": 20, "type": "order_id"}], "where is order 12345", "white space"),
        ([{"start": 15, "end": 20, "type": "order id"}], "where is order 12345", "is not a name"),
        ("{not json", "where is order 12345", "not JSON"),
        ([{"start": 15, "end": 20, "type": "order_id"}], "where is order [12345](order_id)", "both inline"),
    ],
)
def test_bad_spans_are_refused_naming_file_and_row(tmp_path, entities, text, fragment):
    assert fragment in _bad_row(tmp_path, entities, text)


def test_bad_span_in_a_folder_names_its_file(tmp_path):
    df = _frame()
    _write(df, tmp_path / "train.csv")
    bad = df.head(4).assign(text=lambda d: d["text"] + " (test)")
    bad.loc[0, "entities"] = json.dumps([{"start": 0, "end": 500, "type": "order_id"}])
    _write(bad, tmp_path / "test.csv")
    with pytest.raises(FlywheelError, match=r"test\.csv: row 0: entity 'order_id'"):
        load_examples(tmp_path, CFG)


def _old_digest(df: pd.DataFrame) -> str:
    """The digest as computed before entities existed: sha256 over sorted (text, intent, split)."""
    h = hashlib.sha256()
    for row in sorted(zip(df["text"], df["intent"], df["split"])):
        h.update(json.dumps(row, ensure_ascii=False).encode() + b"\n")
    return h.hexdigest()


def test_digest_of_entity_free_data_is_unchanged(sample_df):
    plain = assign_splits(validate_examples(sample_df[["text", "intent"]], "sample", DataConfig()), DataConfig())
    assert set(plain["entities"]) == {"[]"}
    assert dataset_digest(plain) == _old_digest(plain)
    assert dataset_digest(plain.drop(columns=["entities"])) == _old_digest(plain)


def test_digest_changes_with_an_entity():
    df = assign_splits(validate_examples(_frame(), "frame", CFG), CFG)
    base = dataset_digest(df)
    assert base != _old_digest(df)  # the entities count
    assert dataset_digest(df.sample(frac=1.0, random_state=3)) == base
    row = df.index[df["entities"] != "[]"][0]
    spans = load_spans(df.loc[row, "entities"])
    retyped = df.copy()
    retyped.loc[row, "entities"] = dump_spans([{**spans[0], "type": "invoice_number"}, *spans[1:]])
    assert dataset_digest(retyped) != base
    dropped = df.copy()
    dropped.loc[row, "entities"] = dump_spans(spans[1:])
    assert dataset_digest(dropped) not in (base, dataset_digest(retyped))


def test_follow_edit_moves_spans_through_normalisation():
    text = "ｏｒｄｅｒ  　\u200bＮＷ１２３４５  arrived   on\u00a0May 4th "
    spans = [_span(text, "ＮＷ１２３４５", "order_id"), _span(text, "May 4th", "date")]
    new, moved, dropped = follow_edit(normalise, text, spans)
    assert new == "order NW12345 arrived on May 4th" and dropped == 0
    assert [new[s["start"] : s["end"]] for s in moved] == ["NW12345", "May 4th"] == [s["value"] for s in moved]


def test_snips_file_with_cesu8_emoji_and_accents_is_read_exactly(tmp_path):
    """As SNIPS' train_PlayMusic_full.json is: UTF-8, except one emoji written as two CESU-8
    surrogates (its README says Latin-1; the bytes say otherwise): read exactly, spans included."""
    pizza = "Pop Punk Perfection \U0001f355"
    utterances = [
        {"data": [{"text": "play the "}, {"text": "Música Da Série", "entity": "album"}, {"text": " album"}]},
        {"data": [{"text": "add it to "}, {"text": pizza, "entity": "playlist"}]},
    ]
    utf8 = json.dumps({"Order": utterances}, ensure_ascii=False).encode()
    cesu = utf8.replace("\U0001f355".encode(), "\ud83c\udf55".encode("utf-8", "surrogatepass"))  # each half alone
    assert b"\xed\xa0\xbc" in cesu and "é".encode() in cesu
    df = load_examples(_snips_folder(tmp_path, cesu), CFG)
    train = df[df["split"] == "train"]
    assert list(train["text"]) == ["play the Música Da Série album", f"add it to {pizza}"]
    values = [s["value"] for c in train["entities"] for s in load_spans(c)]
    assert values == ["Música Da Série", pizza]
    assert not train["text"].str.contains("Ã|\ufffd|[\ud800-\udfff]").any()  # no mojibake, replacement or surrogate


def _snips_folder(tmp_path: Path, train_bytes: bytes) -> Path:
    folder = tmp_path / "snips"
    folder.mkdir()
    (folder / "train_Order_full.json").write_bytes(train_bytes)
    test = {"Order": [{"data": [{"text": "order a "}, {"text": "crêpe", "entity": "dish"}]}] * 2}
    (folder / "validate_Order.json").write_text(json.dumps(test, ensure_ascii=False), encoding="utf-8")
    return folder


def _train_json(dish: str) -> str:
    utterances = [{"data": [{"text": f"order {n} "}, {"text": f"{dish} ", "entity": "dish"}]} for n in (1, 2, 3)]
    return json.dumps({"Order": utterances}, ensure_ascii=False)


def test_snips_latin1_file_is_read_correctly(tmp_path):
    folder = _snips_folder(tmp_path, _train_json("café crème").encode("latin-1"))
    df = load_examples(folder, CFG)
    train = df[df["split"] == "train"]
    assert list(train["text"]) == ["order 1 café crème", "order 2 café crème", "order 3 café crème"]
    assert {s["value"] for c in train["entities"] for s in load_spans(c)} == {"café crème"}  # edge space trimmed
    assert set(df.loc[df["split"] == "test", "text"]) == {"order a crêpe"}


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (_train_json("“café”").encode("cp1252"), "control character"),  # Windows-1252 quotes
        (_train_json("café").encode() + "é".encode("latin-1"), "mixed encodings"),  # UTF-8 with a stray byte
        (_train_json("x").encode() + b"\xed\xa0\xbc", "unpaired UTF-16 surrogate"),
    ],
)
def test_snips_garbled_file_is_refused(tmp_path, raw, fragment):
    folder = _snips_folder(tmp_path, raw)
    with pytest.raises(FlywheelError) as err:
        load_examples(folder, CFG)
    assert "train_Order_full.json" in str(err.value) and fragment in str(err.value)


def test_decode_joins_cesu8_surrogate_pairs():
    high, low = "\ud83c", "\udf55"  # U+1F355 in UTF-16
    cesu = b"pizza " + (high + low).encode("utf-8", "surrogatepass")  # each surrogate encoded alone
    assert len(cesu) == len("pizza ") + 6
    assert decode(cesu, Path("x.json")) == "pizza \U0001f355"
    assert decode("plain é".encode(), Path("x.json")) == "plain é"


def _training(tmp_path, sample_df) -> pd.DataFrame:
    path = write_subset(sample_df, tmp_path / "base.csv", n_intents=5)
    return assign_splits(load_examples(path, DataConfig()), DataConfig())


def _check(tmp_path, events=None, training=None):
    ev = tr = None
    if events is not None:
        ev = tmp_path / "events.parquet"
        events.to_parquet(ev, index=False)
    if training is not None:
        tr = tmp_path / "training.parquet"
        training.to_parquet(tr, index=False)
    docs = tmp_path / "docs"
    return check_data(
        ev, tr, SAMPLE_DATA, data_cfg=DataConfig(), prep_cfg=PrepareConfig(), cfg=CheckConfig(), docs_dir=docs, now=NOW
    )


def _entity_failure(summary, suite) -> str:
    hits = [f for f in summary.failures if f"suite '{suite}'" in f and "column 'entity_problem'" in f]
    assert len(hits) == 1, summary.failures
    return hits[0]


def test_check_data_catches_bad_spans_in_a_training_snapshot(tmp_path, sample_df):
    training = _training(tmp_path, sample_df)
    assert (training["entities"] != "[]").any()  # the sample data's spans pass
    summary, _, passed = _check(tmp_path, training=training)
    assert passed, summary.failures
    bad = training.copy()
    text = bad.loc[2, "text"]
    bad.loc[2, "entities"] = json.dumps([{"start": 0, "end": 3, "type": "order_id", "value": "zzz"}])
    bad.loc[4, "entities"] = json.dumps([{"start": 0, "end": len(text) + 50, "type": "product"}])
    bad.loc[6, "text"] = "my email is <EMAIL> thanks"
    bad.loc[6, "entities"] = json.dumps([{"start": 12, "end": 19, "type": "email"}])
    summary, md, passed = _check(tmp_path, training=bad)
    assert not passed
    message = _entity_failure(summary, TRAINING_SUITE)
    assert "3 row(s) unexpected" in message and "row 2, value entity 'order_id': claims 'zzz'" in message
    assert "row 4" in message and "row 6" in message and "placeholder" in message
    assert "entity_problem" in md


def test_check_data_catches_bad_predicted_entities_in_events(tmp_path, sample_df):
    events = make_snapshot(sample_df, n=30)
    text = events.loc[1, "text"]
    good = {"start": 0, "end": 2, "type": "greeting", "value": text[:2], "confidence": 0.9}
    events.loc[1, "entities"] = json.dumps([good])
    summary, _, passed = _check(tmp_path, events=events)
    assert passed, summary.failures
    events.loc[3, "entities"] = json.dumps([{**good, "value": events.loc[3, "text"][:2], "confidence": 1.7}])
    events.loc[5, "entities"] = json.dumps([{**good, "start": 400, "end": 405}])
    summary, _, passed = _check(tmp_path, events=events)
    assert not passed
    message = _entity_failure(summary, EVENTS_SUITE)
    assert "row 3" in message and "confidence 1.7" in message and "row 5" in message and "req-00005" in message


def _prepare(tmp_path, base: pd.DataFrame, cfg: PrepareConfig, out: str):
    base_csv = tmp_path / f"{out}.csv"
    base.to_csv(base_csv, index=False)
    snapshot = write_snapshot(make_snapshot(base, n=40), tmp_path / f"{out}-snapshot.parquet")
    work = tmp_path / "work"
    return prepare_step(
        snapshot, base_csv, None, tmp_path / out,
        data_cfg=DataConfig(), prep_cfg=cfg, pii_cfg=PiiConfig(), reg_cfg=local_registry(work), work=work,
    )  # fmt: skip


def test_prepare_reports_entity_types_below_the_floor(tmp_path, sample_df):
    keep = sorted(set(sample_df["intent"]) - {"oos"})[:6] + ["oos"]
    base = sample_df[sample_df["intent"].isin(keep)].reset_index(drop=True)
    row = base.index[base["entities"] != "[]"][0]
    spans = load_spans(base.loc[row, "entities"])
    base.loc[row, "entities"] = dump_spans([{**spans[0], "type": "gift_card"}, *spans[1:]])  # one rare type
    cfg = PrepareConfig(log_to_mlflow=False, entity_floor=10)
    result, md = _prepare(tmp_path, base, cfg, "prepared")
    sheet = json.loads((tmp_path / "prepared" / "datasheet.json").read_text())
    examples = pd.read_parquet(tmp_path / "prepared" / "examples.parquet")
    counts = Counter(s["type"] for cell in examples["entities"] for s in load_spans(cell))
    section = sheet["entities"]
    assert {k: sum(v.values()) for k, v in section["by_type_and_split"].items()} == dict(counts)
    assert section["floor"] == 10 and section["below_floor"] == {k: n for k, n in counts.items() if n < 10}
    assert section["below_floor"]["gift_card"] == 1 and max(counts.values()) >= 10
    assert result.entity_types_below_floor == section["below_floor"]
    assert "Entity types below the floor of 10 spans" in md and "gift_card (1)" in md
    assert "| entity type | spans | train | val | test |" in md


def test_prepare_without_entities_writes_the_datasheet_as_before(tmp_path, sample_df):
    keep = sorted(set(sample_df["intent"]) - {"oos"})[:5] + ["oos"]
    base = sample_df.loc[sample_df["intent"].isin(keep), ["text", "intent"]].reset_index(drop=True)
    result, md = _prepare(tmp_path, base, PrepareConfig(log_to_mlflow=False), "plain")
    sheet = json.loads((tmp_path / "plain" / "datasheet.json").read_text())
    assert "entities" not in sheet and result.entity_types_below_floor is None
    assert "entity type" not in md
    assert set(pd.read_parquet(tmp_path / "plain" / "examples.parquet")["entities"]) == {"[]"}
