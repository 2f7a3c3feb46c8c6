"""The closed loop's HTML report: built from a synthetic loop record, real Parquet traffic and a real git repo."""

from __future__ import annotations

import json
import re
import subprocess
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import plotly.offline
import pytest

from model.core.errors import FlywheelError
from model.loop.record import LoopRecord, StageEntry
from model.loop.report import outcome_line, render_report
from scripts.cli import main

T0 = pd.Timestamp("2026-11-27T10:00:00Z")
PHASES = [  # phase, requests, share of them on v2 (the canary), accuracy of v1 and v2 in that phase
    ("before-shift", 150, 0.0, 0.9, 0.9),
    ("shifted", 100, 0.0, 0.55, 0.9),
    ("canary-look-1", 100, 0.2, 0.55, 0.85),
    ("promoted", 80, 1.0, 0.55, 0.85),
]
GIT_SUBJECTS = ["release v1 to production", "retrain: drift found in window 10:00-10:05", "promote v2 in production"]


def write_traffic(path, rng) -> pd.DataFrame:
    rows, t = [], T0
    for phase, n, canary_share, acc_v1, acc_v2 in PHASES:
        for _ in range(n):
            canary = rng.random() < canary_share
            version = "2" if canary else "1"
            correct = bool(rng.random() < (acc_v2 if canary else acc_v1))
            feedback = (
                rng.choice(["thumbs_up", "", "resolved"])
                if correct
                else rng.choice(["thumbs_down", "escalated", "abandoned"])
            )
            rows.append(
                {
                    "time": t.to_pydatetime(),
                    "phase": phase,
                    "request_id": f"r{len(rows)}",
                    "conversation_id": f"c{len(rows) // 3}",
                    "text": "where is my parcel",
                    "true_intent": "track_order",
                    "predicted_intent": "track_order" if correct else "refund",
                    "confidence": 0.9 if correct else 0.4,
                    "fallback": bool(not correct and rng.random() < 0.3),
                    "correct": correct,
                    "model_version": version,
                    "arm": "canary" if canary and phase != "promoted" else "stable",
                    "feedback": feedback,
                    "latency_ms": 12.0,
                    "status": 200,
                }
            )
            t += pd.Timedelta(seconds=1)
    df = pd.DataFrame(rows)
    df.to_parquet(path)
    return df


def make_git_repo(path) -> None:
    """main: release, a retrain pull request merged with a merge commit, a promote; plus an open branch."""

    def git(*args):
        subprocess.run(["git", "-C", str(path), *args], check=True, capture_output=True)

    def commit(name, subject):
        (path / name).write_text(subject + "\n")
        git("add", name)
        git("commit", "--quiet", "-m", subject)

    path.mkdir()
    git("init", "--quiet", "--initial-branch=main")
    git("config", "user.name", "Flywheel bot")
    git("config", "user.email", "bot@flywheel.invalid")
    commit("release.txt", GIT_SUBJECTS[0])
    git("checkout", "--quiet", "-b", "flywheel/retrain-1")
    commit("retrain.txt", "add retrain request")
    git("checkout", "--quiet", "main")
    git("merge", "--quiet", "--no-ff", "-m", GIT_SUBJECTS[1], "flywheel/retrain-1")
    commit("promote.txt", GIT_SUBJECTS[2])
    git("checkout", "--quiet", "-b", "flywheel/unmerged")
    commit("other.txt", "an open pull request")
    git("checkout", "--quiet", "main")


@pytest.fixture
def loop(tmp_path):
    traffic = write_traffic(tmp_path / "traffic.parquet", np.random.default_rng(7))
    make_git_repo(tmp_path / "gitops")
    (tmp_path / "drift.html").write_text("<html>evidently</html>")
    arm = {"requests": 80, "errors": 0, "fallbacks": 4, "escalations": 3, "thumbs_up": 30, "thumbs_down": 5}
    record = {
        "dataset": "sample",
        "started_at": "2026-11-27T10:00:00Z",
        "finished_at": "2026-11-27T10:08:00Z",
        "seconds": 480.0,
        "intents": {"known_at_start": ["track_order", "refund"], "held_back": ["cancel_order"]},
        "stages": [
            {"name": "train-v1", "title": "Train v1", "status": "done", "seconds": 60.0, "summary": "acc 0.91"},
            {"name": "traffic", "title": "Simulate traffic", "status": "done", "seconds": 30.0, "summary": ""},
            {"name": "canary", "title": "Canary", "status": "done", "seconds": 20.0, "summary": "promote"},
        ],
        "traffic": str(tmp_path / "traffic.parquet"),
        "events": [
            {"time": str(T0 + pd.Timedelta(seconds=150)), "label": "traffic shifts"},
            {"time": str(T0 + pd.Timedelta(seconds=250)), "label": "canary starts"},
            {"time": str(T0 + pd.Timedelta(seconds=350)), "label": "promoted v2"},
        ],
        "drift": {
            "drift": True,
            "reasons": ["share of fallbacks rose from 4% to 31%"],
            "html": str(tmp_path / "drift.html"),
            "markdown": "## Drift check: **Drift detected**\n\n| signal | drift |\n|---|---|\n| fallback | yes |\n",
        },
        "gate": {
            "passed": True,
            "reasons": ["accuracy 0.88 >= floor 0.80"],
            "markdown": "## Gate: PASSED",
            "challenger": {},
        },
        "canary": {
            "decision": "promote",
            "reasons": ["canary non-inferior on every rate"],
            "markdown": "## Canary analysis: **PROMOTE**",
            "looks": [
                {
                    "look": 1,
                    "decision": "hold",
                    "stable": {**arm, "model_version": 1},
                    "canary": {**arm, "requests": 20, "model_version": 2},
                },
                {
                    "look": 2,
                    "decision": "promote",
                    "stable": {**arm, "model_version": 1},
                    "canary": {**arm, "model_version": 2},
                },
            ],
        },
        "offline": [
            {"model_version": "1", "test_accuracy": 0.71, "macro_f1": 0.65, "test_set": "test.parquet"},
            {"model_version": "2", "test_accuracy": 0.89, "macro_f1": 0.87, "test_set": "test.parquet"},
        ],
        "labelling": {"budget": 300, "labelled": 300, "error_rate": 0.05, "wrong_labels": 14},
        "pull_requests": [
            {
                "kind": "retrain",
                "title": "Retrain: drift found",
                "branch": "flywheel/retrain-1",
                "commit": "a" * 40,
                "merged": True,
                "body": "## Retrain\n\n- window 10:00-10:05",
            },
        ],
        "git_repo": str(tmp_path / "gitops"),
        "registry": {
            "tracking_uri": "sqlite:///work/mlflow.db",
            "model_name": "support-intents",
            "versions": [
                {
                    "version": 1,
                    "aliases": [],
                    "run_id": "run-one-1111",
                    "dataset_digest": "d1" * 32,
                    "git_sha": "1" * 40,
                    "created": "2026-11-27T10:01:00Z",
                    "metrics": {"test_accuracy": 0.71},
                },
                {
                    "version": 2,
                    "aliases": ["champion", "challenger"],
                    "run_id": "run-two-2222",
                    "dataset_digest": "d2" * 32,
                    "git_sha": "2" * 40,
                    "created": "2026-11-27T10:05:00Z",
                    "metrics": {"test_accuracy": 0.89},
                },
            ],
        },
    }
    return record, traffic


class Tables(HTMLParser):
    """Cell texts of every table with an id: {id: [[cell, ...], ...]}."""

    def __init__(self, html: str):
        super().__init__()
        self.tables, self._table, self._row, self._cell = {}, None, None, None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        if tag == "table" and dict(attrs).get("id"):
            self._table = self.tables.setdefault(dict(attrs)["id"], [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(self._cell.strip())
            self._cell = None
        elif tag == "table":
            self._table = self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def chart_data(html: str, div_id: str) -> list[dict]:
    """The traces plotly draws in the chart ``div_id``, read back from the page."""
    start = re.search(rf'Plotly\.newPlot\(\s*"{div_id}",\s*', html).end()
    return json.JSONDecoder().raw_decode(html, start)[0]


def test_report_shows_charts_tables_and_verdicts(loop, tmp_path):
    record, traffic = loop
    out = render_report(record, tmp_path / "report" / "loop.html")
    html = out.read_text()

    assert out == tmp_path / "report" / "loop.html" and out.is_file()
    assert not re.search(r"<script[^>]*\bsrc=", html), "the page must not load scripts from elsewhere"
    assert html.count(plotly.offline.get_plotlyjs()[:200]) == 1, "plotly.js inlined exactly once"
    for div_id in ("chart-accuracy", "chart-thumbs", "chart-arms", "chart-canary", "chart-offline"):
        assert f'id="{div_id}"' in html
    assert "Accuracy over time per model version" in html and "Canary looks: stable vs canary" in html

    tables = Tables(html).tables
    by_version = {row[0]: row for row in tables["by-version"][1:]}
    assert set(by_version) == {"v1", "v2"}
    for version, g in traffic.groupby("model_version"):
        rated = g[g["feedback"].isin(["thumbs_up", "thumbs_down"])]
        assert by_version[f"v{version}"][1] == str(len(g))
        assert by_version[f"v{version}"][3] == f"{g['correct'].mean():.1%}"
        assert by_version[f"v{version}"][6] == f"{(rated['feedback'] == 'thumbs_up').mean():.1%} ({len(rated)})"
    assert [row[0] for row in tables["by-phase"][1:]] == [p[0] for p in PHASES]

    # the accuracy chart's points, weighted by their request counts, give back each version's accuracy
    traces = {t["name"]: t for t in chart_data(html, "chart-accuracy")}
    for version, g in traffic.groupby("model_version"):
        t = traces[f"v{version}"]
        assert sum(t["customdata"]) == len(g)
        assert np.dot(t["y"], t["customdata"]) / len(g) == pytest.approx(g["correct"].mean())
    assert html.count("traffic shifts") >= 3  # marked on each of the three time charts

    log = tables["git-log"][1:]
    assert [row[3] for row in log] == list(reversed(GIT_SUBJECTS))
    branches = {row[0]: row[3] for row in tables["git-branches"][1:]}
    assert branches == {"main": "yes", "flywheel/retrain-1": "yes", "flywheel/unmerged": "no"}
    assert "add retrain request" in html.split('id="git-log"')[1].split("</table>")[1]  # in the graph only

    registry = {row[0]: row for row in tables["registry-versions"][1:]}
    assert registry["v2"][1] == "champion, challenger" and registry["v1"][1] == ""
    assert registry["v2"][3] == "run-two-2222" and "test_accuracy = 0.89" in registry["v2"][6]

    assert "v1 → drift found → v2 trained on 300 labels → canary promoted" in html
    assert "Decision: promote" in html
    assert "share of fallbacks rose from 4% to 31%" in html
    assert "<table>" in html.split('id="drift"')[1]  # the drift markdown's table is rendered
    assert 'href="../drift.html"' in html  # the Evidently report, linked relative to the page
    assert "not reached" not in html


def test_text_from_the_record_is_escaped(loop, tmp_path):
    record, _ = loop
    record["pull_requests"][0]["title"] = "<script>alert('title')</script>"
    record["pull_requests"][0]["body"] = "<script>alert('body')</script>\n\n[x](javascript:alert(1))"
    record["drift"]["reasons"] = ['<img src=x onerror="alert(1)">']
    record["events"][0]["label"] = "</script><script>alert('event')</script>"
    html = render_report(record, tmp_path / "r.html").read_text()

    for payload in ("<script>alert('title')", "<script>alert('body')", "<img src=x", "<script>alert('event')"):
        assert payload not in html
    assert "&lt;script&gt;alert(&#39;title&#39;)&lt;/script&gt;" in html
    assert "&lt;script&gt;alert('body')&lt;/script&gt;" in html  # markdown renders raw HTML as text
    assert 'href="javascript:' not in html


def test_a_loop_that_stopped_early_says_what_was_not_reached(tmp_path):
    record = {
        "dataset": "sample",
        "stages": [{"name": "train-v1", "title": "Train v1", "status": "failed", "seconds": 3.2, "summary": "boom"}],
        "drift": None,
        "gate": None,
        "canary": None,
        "labelling": None,
        "traffic": None,
        "git_repo": None,
        "registry": None,
        "pull_requests": [],
        "offline": [],
        "events": [],
    }
    html = render_report(record, tmp_path / "r.html").read_text()
    for stage in (
        "Traffic simulation",
        "Drift check",
        "Labelling",
        "Gate",
        "Canary analysis",
        "Stand-in repository",
        "Registry",
    ):
        assert f"{stage}: not reached." in html
    assert "no first model → drift check not reached → failed at Train v1" in html
    assert 'class="plotly-graph-div"' not in html


def test_a_typed_record_of_a_stopped_loop_renders(tmp_path):
    """What the loop writes when its first stage fails: every section null, the stage failed."""
    record = LoopRecord(dataset="sample", started_at="2026-11-27T10:00:00Z", stages=[StageEntry("setup", "Setup")])
    html = render_report(record.to_dict(), tmp_path / "r.html").read_text()
    assert "no first model → drift check not reached → failed at Setup" in html
    assert "Drift check: not reached." in html and "Registry: not reached." in html


def test_empty_traffic_file_renders_without_time_charts(loop, tmp_path):
    record, traffic = loop
    traffic.iloc[:0].to_parquet(tmp_path / "empty.parquet")
    record["traffic"] = str(tmp_path / "empty.parquet")
    html = render_report(record, tmp_path / "r.html").read_text()
    assert "The traffic file holds no requests." in html
    assert 'id="chart-accuracy"' not in html and 'id="chart-canary"' in html


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r, p: r.update(traffic=str(p / "nowhere.parquet")), "nowhere.parquet"),
        (
            lambda r, p: pd.DataFrame({"time": [T0]}).to_parquet(r["traffic"]),
            r"traffic.parquet lacks column\(s\) phase",
        ),
        (lambda r, p: r.update(git_repo=str(p / "no-repo")), "no-repo"),
        (lambda r, p: r["events"].append({"label": "no time"}), r"events\[3\]"),
    ],
)
def test_bad_record_is_a_clear_error_and_writes_nothing(loop, tmp_path, change, message):
    record, _ = loop
    change(record, tmp_path)
    with pytest.raises(FlywheelError, match=message):
        render_report(record, tmp_path / "out" / "r.html")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "drift, gate, canary, expected",
    [
        (
            {"drift": True},
            {"passed": True},
            {"decision": "rollback", "looks": []},
            "v1 → drift found → v2 trained on 300 labels → canary rolled back",
        ),
        ({"drift": True}, {"passed": False}, None, "v1 → drift found → challenger rejected by the gate"),
        ({"drift": True}, None, None, "v1 → drift found → retrain not reached"),
        ({"drift": False}, None, None, "v1 → no drift found → retrain not reached"),
        ({"drift": True}, {"passed": True}, None, "v1 → drift found → v2 trained on 300 labels → canary not reached"),
    ],
)
def test_outcome_line(loop, drift, gate, canary, expected):
    record, _ = loop
    record.update(drift=drift, gate=gate, canary=canary)
    assert outcome_line(record) == expected


def test_command_line(loop, tmp_path, capsys):
    record, _ = loop
    (tmp_path / "loop.json").write_text(json.dumps(record))
    assert main(["report", str(tmp_path / "loop.json"), "--out", str(tmp_path / "out.html")]) == 0
    assert (tmp_path / "out.html").is_file()
    assert json.loads(capsys.readouterr().out)["report"] == str(tmp_path / "out.html")
    assert main(["report", str(tmp_path / "loop.json")]) == 0  # default: beside the record
    assert (tmp_path / "report.html").is_file()
    (tmp_path / "bad.json").write_text("{")
    assert main(["report", str(tmp_path / "bad.json")]) == 2
    assert "loop record" in capsys.readouterr().err and not (tmp_path / "bad.html").exists()
