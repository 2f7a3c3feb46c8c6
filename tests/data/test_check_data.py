"""flywheel check-data: Great Expectations suites for logged events and training snapshots, on bad input."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from data_checks.validate import EVENTS_SUITE, TRAINING_SUITE, check_data
from model.core.config import SAMPLE_DATA, CheckConfig, DataConfig, PrepareConfig
from model.core.reports import as_json
from model.data.conversations import write_snapshot
from model.data.examples import assign_splits, load_examples
from scripts.cli import main
from tests.helpers.data import write_subset
from tests.helpers.snapshots import make_snapshot

NOW = datetime(2026, 11, 27, tzinfo=UTC)  # the fixtures' events are from 2026-11-20


@pytest.fixture
def training(tmp_path, sample_df) -> pd.DataFrame:
    path = write_subset(sample_df, tmp_path / "base.csv", n_intents=5)
    return assign_splits(load_examples(path, DataConfig()), DataConfig())


@pytest.fixture
def events(sample_df) -> pd.DataFrame:
    return make_snapshot(sample_df, n=40)


def _check(tmp_path, events_df=None, training_df=None, prep_cfg=None):
    prep_cfg = prep_cfg or PrepareConfig()
    ev = tr = None
    if events_df is not None:
        ev = tmp_path / "events.parquet"
        events_df.to_parquet(ev, index=False)
    if training_df is not None:
        tr = tmp_path / "training.parquet"
        training_df.to_parquet(tr, index=False)
    return check_data(
        ev,
        tr,
        SAMPLE_DATA,
        data_cfg=DataConfig(),
        prep_cfg=prep_cfg,
        cfg=CheckConfig(),
        docs_dir=tmp_path / "docs",
        now=NOW,
    )


def test_clean_inputs_pass_and_write_data_docs(tmp_path, events, training):
    write_snapshot(events, tmp_path / "typed.parquet")  # the collector's exact schema also passes
    summary, md, passed = _check(tmp_path, pd.read_parquet(tmp_path / "typed.parquet"), training)
    assert passed, summary.failures
    assert [s["suite"] for s in summary.suites] == [EVENTS_SUITE, TRAINING_SUITE]
    assert all(s["ran"] == s["defined"] == s["passed"] for s in summary.suites)
    assert summary.suites[0]["defined"] >= 40 and summary.suites[1]["defined"] >= 15
    docs = Path(summary.data_docs)
    assert docs.is_file() and list((docs.parent / "validations").rglob("*.html"))
    assert "passed" in md


def _fails(summary, suite, expectation, column, *fragments):
    hits = [
        f
        for f in summary.failures
        if f"suite '{suite}'" in f and expectation in f and (column is None or f"column '{column}'" in f)
    ]
    assert hits, summary.failures
    for fragment in fragments:
        assert any(fragment in h for h in hits), (fragment, hits)


def test_events_with_nulls_duplicates_and_bad_values(tmp_path, events):
    bad = events.copy()
    bad["confidence"] = bad["confidence"].astype(object)
    bad.loc[3, "confidence"] = None
    bad.loc[5, "request_id"] = bad.loc[4, "request_id"]
    bad.loc[7, "thumbs"] = "meh"
    bad.loc[8, "model_version"] = ""
    bad.loc[9, "timestamp"] = pd.Timestamp("2031-01-01", tz="UTC")
    summary, _, passed = _check(tmp_path, events_df=bad)
    assert not passed
    _fails(summary, EVENTS_SUITE, "expect_column_values_to_not_be_null", "confidence", "row 3")
    _fails(summary, EVENTS_SUITE, "expect_column_values_to_be_unique", "request_id", "row 4", "row 5")
    _fails(summary, EVENTS_SUITE, "expect_column_values_to_be_in_set", "thumbs", "row 7, value meh")
    _fails(summary, EVENTS_SUITE, "expect_column_value_lengths_to_be_between", "model_version", "row 8")
    _fails(summary, EVENTS_SUITE, "expect_column_values_to_be_between", "timestamp", "row 9")


def test_events_with_planted_personal_data_name_rows_not_values(tmp_path, events):
    bad = events.copy()
    bad.loc[2, "text"] = "my card is 4111 1111 1111 1111, why was it declined"
    bad.loc[6, "text"] = "email me at jane.doe@example.org"
    summary, md, passed = _check(tmp_path, events_df=bad)
    assert not passed
    _fails(
        summary,
        EVENTS_SUITE,
        "expect_column_values_to_contain_no_personal_data",
        "text",
        "row 2, entities ['CARD']",
        "row 6, entities ['EMAIL']",
        "req-00006",
    )
    dumped = json.dumps(as_json(summary)) + md + "".join(p.read_text() for p in (tmp_path / "docs").rglob("*.html"))
    assert "4111 1111" not in dumped and "jane.doe" not in dumped  # the check does not copy what it found


def test_events_missing_column_fails_and_counts_what_did_not_run(tmp_path, events):
    summary, _, passed = _check(tmp_path, events_df=events.drop(columns=["arm"]))
    assert not passed
    _fails(summary, EVENTS_SUITE, "expect_column_to_exist", "arm")
    assert any("expectations ran" in f and "only" in f for f in summary.failures)
    suite = summary.suites[0]
    assert suite["ran"] < suite["defined"]


def test_empty_window_fails(tmp_path, events):
    summary, _, passed = _check(tmp_path, events_df=events.iloc[:0])
    assert not passed
    _fails(summary, EVENTS_SUITE, "expect_table_row_count_to_be_between", None, "observed 0")


@pytest.mark.parametrize(
    "problem, expectation, column, fragment",
    [
        ("unknown_label", "expect_column_values_to_be_in_set", "intent", "value gift_wrap"),
        ("duplicates", "expect_column_values_to_be_unique", "text_casefolded", "row 1"),
        ("pii", "expect_column_values_to_contain_no_personal_data", "text", "entities ['PHONE']"),
        ("overlap", "expect_no_text_in_both_train_and_test", None, "split train"),
        ("rare_intent", "expect_column_value_counts_to_be_at_least", "intent", "below minimum"),
        ("short_text", "expect_column_value_lengths_to_be_between", "text", "value ok"),
        ("nulls", "expect_column_values_to_not_be_null", "intent", "row 4"),
        ("missing_column", "expect_column_to_exist", "split", ""),
    ],
)
def test_training_snapshot_problems(tmp_path, training, problem, expectation, column, fragment):
    bad = training.copy()
    test_text = bad.loc[bad["split"] == "test", "text"].iloc[0]
    if problem == "unknown_label":
        bad.loc[0, "intent"] = "gift_wrap"
    elif problem == "duplicates":
        bad.loc[1, "text"] = bad.loc[0, "text"].upper()
    elif problem == "pii":
        bad.loc[2, "text"] = "call me back on +44 7911 123456"
    elif problem == "overlap":
        bad.loc[bad.index[bad["split"] == "train"][0], "text"] = test_text
    elif problem == "rare_intent":
        keep = bad["intent"] != bad["intent"].iloc[0]
        bad = pd.concat([bad[keep], bad[~keep].head(3)], ignore_index=True)
    elif problem == "short_text":
        bad.loc[3, "text"] = "ok"
    elif problem == "nulls":
        bad.loc[4, "intent"] = None
    elif problem == "missing_column":
        bad = bad.drop(columns=["split"])
    summary, _, passed = _check(tmp_path, training_df=bad)
    assert not passed
    _fails(summary, TRAINING_SUITE, expectation, column, fragment)


def test_new_intent_passes_once_declared(tmp_path, training):
    extra = pd.DataFrame(
        {
            "text": [f"can you gift wrap item number {i}" for i in range(10)],
            "intent": "gift_wrap",
            "source": "human",
            "conversation_id": "",
            "split": "train",
        }
    )
    df = pd.concat([training, extra], ignore_index=True)
    _, _, passed = _check(tmp_path, training_df=df)
    assert not passed
    summary, _, passed = _check(tmp_path, training_df=df, prep_cfg=PrepareConfig(new_intents=["gift_wrap"]))
    assert passed, summary.failures


def test_cli_exit_codes_and_reports(tmp_path, events, capsys):
    path = tmp_path / "events.parquet"
    bad = events.copy()
    bad.loc[1, "arm"] = "blue"
    bad.to_parquet(path, index=False)
    code = main(["check-data", "--events", str(path), "--training", "", "--report-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 1
    assert (
        "suite 'logged_events'" in err
        and "expect_column_values_to_be_in_set on column 'arm'" in err
        and "value blue" in err
    )
    report = json.loads((tmp_path / "r" / "check-data.json").read_text())
    assert report["passed"] is False and (tmp_path / "r" / "data_docs" / "index.html").is_file()
    assert main(["check-data", "--events", str(tmp_path / "nope.parquet")]) == 2
