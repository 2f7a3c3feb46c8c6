"""A month of traffic on one machine: the synthetic window ``make bench-scale`` measures, and the export of
a window read from the store a batch at a time (model/collect/streamed_export.py)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from data_checks.pii import default_scanner
from model.collect.arms import UNKNOWN
from model.collect.events import parse_event
from model.collect.export import content_digest, export_window, window_rows
from model.collect.store import count_rows, open_store
from model.core.config import CollectorConfig
from model.data.conversations import COLUMNS
from scripts.synthetic_traffic import VERSIONS, Traffic, WindowSpec
from scripts.synthetic_window import (
    feedback_event,
    feedback_row,
    fill_store,
    logger_events,
    store_rows,
)

END = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def test_generated_rows_are_what_the_collector_stores():
    """Each call's rows are what the collector's parse_event makes of the CloudEvents KServe's logger and the
    front end would send for it (redaction by the real scanner included), with the arm it attributes."""
    redact = default_scanner().redact
    calls, feedback = [], []
    for conversation, reactions in Traffic(WindowSpec(requests=1500, days=2, end=END, seed=5)).conversations():
        calls += conversation
        feedback += reactions
    for call in calls:
        expected = store_rows(call, redact)
        for (headers, body), row in zip(logger_events(call), expected, strict=True):
            table, parsed = parse_event(headers, body, row["received_at"], redact)
            arm = VERSIONS[call.version] if parsed["kind"] == "response" else UNKNOWN
            assert (table, {**parsed, "arm": arm}) == ("inference", row)
    for f in feedback:
        headers, body = feedback_event(f)
        assert parse_event(headers, body, f.at + timedelta(milliseconds=40), redact) == ("feedback", feedback_row(f))
    texts = [t for c in calls for t in c.texts]
    assert len(set(texts)) >= 0.8 * len(texts)  # most messages are distinct, as in real traffic
    stored = " ".join(r["body"] for c in calls for r in store_rows(c, redact))
    assert "<EMAIL>" in stored or "<PHONE>" in stored or "<CARD>" in stored  # personal data was redacted
    assert {c.protocol for c in calls} == {"v1", "v2"} and any(c.predictions is None for c in calls)
    assert {f.kind for f in feedback} >= {"thumbs_up", "thumbs_down", "escalated"}


def test_window_is_the_same_for_the_same_spec():
    spec = WindowSpec(requests=50, days=1, end=END, seed=9)
    first, second = (list(Traffic(spec).conversations()) for _ in range(2))
    assert first == second and len([c for calls, _ in first for c in calls]) >= 30


def test_export_in_batches_is_byte_for_byte_the_export_in_one(store_url, tmp_path):
    """A window read from the store 7 events at a time is the file read in one batch, and holds exactly
    the rows, digest and skipped counts of the in-memory rules (snapshot_rows.answered_rows)."""
    spec = WindowSpec(requests=1500, days=1, end=END, seed=11)
    engine = open_store(store_url)
    fill_store([engine], spec, default_scanner().redact)
    assert count_rows(engine)["feedback"] > 100
    one = export_window(
        engine, spec.start, spec.end, tmp_path / "one.parquet", CollectorConfig(export_batch_rows=10**6)
    )
    many = export_window(engine, spec.start, spec.end, tmp_path / "many.parquet", CollectorConfig(export_batch_rows=7))
    assert (tmp_path / "one.parquet").read_bytes() == (tmp_path / "many.parquet").read_bytes()
    assert dataclasses.replace(one, path="") == dataclasses.replace(many, path="")

    _, rows, skipped = window_rows(engine, spec.start, spec.end)
    assert one.content_digest == content_digest(rows) and one.skipped == skipped
    exported = pd.read_parquet(tmp_path / "one.parquet")
    pd.testing.assert_frame_equal(exported, pd.DataFrame(rows, columns=COLUMNS), check_dtype=False)
    # the window holds every case the rules distinguish
    assert exported["request_id"].str.contains("/").any() and skipped["no_response"] > 0
    assert (exported["thumbs"] == "down").any() and exported["escalated"].any() and exported["resolved"].any()


@pytest.mark.parametrize("batch", [1, 3])
def test_export_of_an_empty_window_in_batches(tmp_path, batch):
    engine = open_store(f"sqlite:///{tmp_path / 'empty.db'}")
    result = export_window(
        engine, END, END + timedelta(hours=1), tmp_path / "e.parquet", CollectorConfig(export_batch_rows=batch)
    )
    assert result.rows == 0 and result.requests == 0 and pd.read_parquet(tmp_path / "e.parquet").empty
