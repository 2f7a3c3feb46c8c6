"""Code tests for model.data.examples: formats, bad input, splits, digests."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from model.core.config import DataConfig
from model.core.errors import FlywheelError
from model.data.examples import assign_splits, dataset_digest, load_examples, validate_examples
from model.data.readers import read_json, read_parquet, read_table

CFG = DataConfig(min_examples_per_intent=2)


def _rows(n_per_intent=4, intents=("a", "b")):
    return [{"text": f"message {i} about {k}", "intent": k} for k in intents for i in range(n_per_intent)]


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_project_formats_load_the_same_examples(tmp_path, suffix):
    df = pd.DataFrame(_rows())
    path = tmp_path / f"data{suffix}"
    {
        ".csv": lambda: df.to_csv(path, index=False),
        ".parquet": lambda: df.to_parquet(path),
        ".jsonl": lambda: df.to_json(path, orient="records", lines=True),
    }[suffix]()
    loaded = load_examples(path, CFG)
    assert sorted(loaded["text"]) == sorted(df["text"])
    assert set(loaded["source"]) == {"seed"}
    assert list(loaded.columns) == ["text", "intent", "entities", "source", "conversation_id", "split"]
    assert set(loaded["entities"]) == {"[]"}  # no entities column: none, in canonical form


def test_banking77_folder_keeps_its_train_test_split(tmp_path):
    pd.DataFrame(_rows()).rename(columns={"intent": "category"}).to_csv(tmp_path / "train.csv", index=False)
    pd.DataFrame(_rows(2)).rename(columns={"intent": "category"}).assign(text=lambda d: d["text"] + " (test)").to_csv(
        tmp_path / "test.csv", index=False
    )
    df = load_examples(tmp_path, CFG)
    assert df.groupby("split").size().to_dict() == {"test": 4, "train": 8}
    assert set(df["intent"]) == {"a", "b"}


def test_clinc150_json_with_oos(tmp_path):
    raw = {
        "train": [["hi there a", "a"]] * 0
        + [[f"t{i} a", "a"] for i in range(3)]
        + [[f"t{i} b", "b"] for i in range(3)],
        "val": [["v a", "a"], ["v b", "b"]],
        "test": [["x a", "a"], ["x b", "b"]],
        "oos_train": [["weather today", "oos"]],
        "oos_val": [["tell a joke", "oos"]],
        "oos_test": [["who won", "oos"]],
    }
    path = tmp_path / "data_full.json"
    path.write_text(json.dumps(raw))
    df = load_examples(path, CFG)
    assert (df["intent"] == "oos").sum() == 3
    split = assign_splits(df, CFG)
    assert not ((split["intent"] == "oos") & (split["split"] == "train")).any(), "oos must never be trained on"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "file is empty"),
        ("text,label\nhello,a\n", "missing column(s) intent"),
        ("text,intent\n", "file is empty"),
        ("text,intent\nhello,\n", "empty 'intent'"),
    ],
)
def test_bad_csv_names_the_problem_and_the_file(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(FlywheelError) as err:
        load_examples(path, CFG)
    assert message in str(err.value) and str(path) in str(err.value)


def test_unreadable_parquet(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"this is not parquet at all")
    with pytest.raises(FlywheelError, match="cannot read as parquet"):
        load_examples(path, CFG)


def test_one_reader_for_tables_and_json(tmp_path):
    """What examples, snapshots, review labels and check-data read files with."""
    table = tmp_path / "t.csv"
    table.write_text("text,intent\nhello,\nNA,a\n")
    assert read_table(table)["intent"].tolist() == ["", "a"] and read_table(table)["text"].tolist() == ["hello", "NA"]
    as_checked = read_table(table, blanks_as_missing=True)  # check-data: a blank cell is a missing value
    assert as_checked["intent"].isna().tolist() == [True, False] and as_checked["text"].isna().tolist() == [False, True]
    (tmp_path / "t.xlsx").write_text("x")
    with pytest.raises(FlywheelError, match="t.xlsx: unsupported format"):
        read_table(tmp_path / "t.xlsx")
    with pytest.raises(FlywheelError, match="nope.jsonl: no such file"):
        read_table(tmp_path / "nope.jsonl")
    (tmp_path / "t.json").write_text("{not json")
    with pytest.raises(FlywheelError, match="t.json: cannot read as JSON"):
        read_json(tmp_path / "t.json")
    with pytest.raises(FlywheelError, match="t.csv: cannot read as parquet"):
        read_parquet(table)


def test_intent_with_too_few_examples_is_named(tmp_path):
    rows = _rows(10, ("a", "b")) + [{"text": "lonely", "intent": "rare"}]
    path = tmp_path / "few.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    with pytest.raises(FlywheelError, match=r"rare \(1\)"):
        load_examples(path, DataConfig(min_examples_per_intent=5))


def test_unknown_format_and_missing_file(tmp_path):
    (tmp_path / "x.xlsx").write_text("x")
    with pytest.raises(FlywheelError, match="unsupported format"):
        load_examples(tmp_path / "x.xlsx", CFG)
    with pytest.raises(FlywheelError, match="no such file"):
        load_examples(tmp_path / "nope.csv", CFG)


def test_splits_are_stable_when_data_grows_and_never_leak(sample_df):
    cfg = DataConfig()
    base = assign_splits(load_frame(sample_df), cfg)
    grown = assign_splits(
        load_frame(
            pd.concat(
                [
                    sample_df,
                    pd.DataFrame([{"text": f"new example number {i}", "intent": "order_status"} for i in range(50)]),
                ]
            )
        ),
        cfg,
    )
    merged = base.merge(grown, on="text", suffixes=("_base", "_grown"))
    assert len(merged) == len(base)
    assert (merged["split_base"] == merged["split_grown"]).all(), "a text changed split when data was added"
    train, test = (
        set(base.loc[base.split == "train", "text"].str.casefold()),
        set(base.loc[base.split == "test", "text"].str.casefold()),
    )
    assert not train & test
    assert 0.08 < (base["split"] == "test").mean() < 0.25


def test_digest_ignores_row_order_but_not_content(sample_df):
    df = assign_splits(load_frame(sample_df), DataConfig())
    assert dataset_digest(df) == dataset_digest(df.sample(frac=1.0, random_state=1))
    changed = df.copy()
    changed.loc[0, "intent"] = "something_else"
    assert dataset_digest(changed) != dataset_digest(df)


def load_frame(df: pd.DataFrame) -> pd.DataFrame:
    return validate_examples(df, "frame", DataConfig())
