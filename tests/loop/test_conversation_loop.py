"""From logged calls to a training set, end to end on tiny data: `flywheel collect` on loopback receives
what KServe's logger and a chat front end post, `flywheel export-events` writes the window, and
`flywheel check-data --events` and `flywheel prepare --snapshot` read that export as it is."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import httpx
import pandas as pd
import pytest

from model.core.config import PROJECT_ROOT
from scripts.cli import main
from tests.helpers.data import write_subset
from tests.helpers.events import feedback_event, inference_event

FIVE_INTENTS = ["account_locked", "apply_promo_code", "cancel_membership", "cancel_order", "change_shipping_address"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def collector_process(tmp_path):
    """`flywheel collect` as its own process on a loopback port, stopped with SIGTERM after the test."""
    port, store = _free_port(), f"sqlite:///{tmp_path / 'conversations.db'}"
    log = open(tmp_path / "collector.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "scripts.cli", "collect", "--http-port", str(port), "--store-url", store,
         "--report-dir", str(tmp_path / "collector-reports")],
        cwd=PROJECT_ROOT, env={**os.environ}, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120  # the PII analyzer is built before the port opens
        while time.time() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            pytest.fail("collector did not become ready:\n" + (tmp_path / "collector.log").read_text())
        yield base, store
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def _call(base: str, request_id: str, texts: list[str], preds: list[dict], at: datetime, conversation: str):
    """One predictor call as KServe's logger reports it: the response event first, then the request."""
    body = {"predictions": [{**p, "reply": "...", "model_version": "4", "arm": "stable"} for p in preds]}
    for kind, payload, when in (
        ("response", body, at + timedelta(milliseconds=15)),
        ("request", {"instances": texts}, at),
    ):
        headers, data = inference_event(kind, request_id, payload, when, conversation=conversation)
        assert httpx.post(base, content=data, headers=headers).status_code == 200


def test_logged_calls_become_a_checked_snapshot_and_a_prepared_training_set(
    collector_process, tmp_path, sample_df, capsys
):
    base, store = collector_process
    t = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    confident = "hey, my login keeps getting rejected since this morning"
    wrong = "write to me at jane.doe@example.com, the voucher code was refused"
    unsure = "what happens with my stuff if i quit the club"
    _call(base, "ok-1", [confident], [{"intent": "account_locked", "confidence": 0.97, "fallback": False}], t, "c-1")
    _call(base, "bad-1", [wrong], [{"intent": "cancel_order", "confidence": 0.61, "fallback": False}], t, "c-2")
    _call(base, "esc-1", [unsure], [{"intent": "cancel_membership", "confidence": 0.3, "fallback": True}], t, "c-3")
    _call(
        base,
        "batch-1",
        ["cancel the order i placed yesterday please", "ship it to my office instead of home"],
        [
            {"intent": "cancel_order", "confidence": 0.93, "fallback": False},
            {"intent": "change_shipping_address", "confidence": 0.91, "fallback": False},
        ],
        t,
        "c-4",
    )
    for event in (
        feedback_event("fb-1", t + timedelta(minutes=1), kind="thumbs_up", request_id="ok-1"),
        feedback_event("fb-2", t + timedelta(minutes=1), kind="thumbs_down", request_id="bad-1"),
        feedback_event("fb-3", t + timedelta(minutes=2), kind="escalated", conversation_id="c-3"),
    ):
        headers, data = event
        assert httpx.post(base, content=data, headers=headers).status_code == 200

    reports, snapshot = tmp_path / "reports", tmp_path / "window.parquet"
    common = ["--report-dir", str(reports)]
    assert main(["export-events", "--store-url", store, "--days", "1", "--out", str(snapshot), *common]) == 0
    exported = json.loads((reports / "export-events.json").read_text())
    assert exported["rows"] == 5 and exported["rated"] == 2

    assert main(["check-data", "--events", str(snapshot), *common]) == 0, capsys.readouterr().err
    checked = json.loads((reports / "check-data.json").read_text())
    (suite,) = checked["suites"]
    assert suite["suite"] == "logged_events" and suite["success"] and suite["ran"] == suite["defined"]

    training = write_subset(sample_df, tmp_path / "training.csv", n_intents=5)
    prepared = tmp_path / "prepared"
    args = ["prepare", "--snapshot", str(snapshot), "--data", str(training), "--out", str(prepared)]
    assert main([*args, "--log-to-mlflow", "false", *common]) == 0, capsys.readouterr().err
    examples = pd.read_parquet(prepared / "examples.parquet")
    auto = examples[examples["source"] == "auto"].set_index("text")["intent"].to_dict()
    # the thumbs-up confident answer is learnt from; unrated ones (batch-1) are not
    assert auto == {confident: "account_locked"}
    queue = pd.read_csv(prepared / "review" / "review_queue.csv", keep_default_na=False).set_index("request_id")
    assert queue.loc["bad-1", "text"] == "write to me at <EMAIL>, the voucher code was refused"
    assert queue.loc["bad-1", "reasons"] == "thumbs_down"
    assert queue.loc["esc-1", "reasons"] == "escalated;fallback"
    assert set(queue.index) == {"bad-1", "esc-1"}

    # and the prepared set passes the training suite, as retrain.yml runs it next
    assert main(["check-data", "--training", str(prepared / "examples.parquet"), "--reference", str(training),
                 *common]) == 0, capsys.readouterr().err  # fmt: skip
