"""The traffic simulator against the real parts: `flywheel serve` (kserve ModelServer, stable + canary,
logging to the collector) and `flywheel collect` (SQLite store), both on loopback ports.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta

import httpx
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from model.artifact.manifest import MANIFEST, write_manifest
from model.collect.export import window_rows
from model.collect.store import count_rows, feedback_events, open_store
from model.core.config import PROJECT_ROOT, TrafficConfig
from model.core.errors import FlywheelError
from model.core.settings import load_config
from model.deploy.canary_metrics import store_arm_metrics
from model.loop.traffic import CANARY, COLUMNS, STABLE, by_percent, case_of, is_correct, plan_messages, react, simulate
from tests.helpers.serving import NAME, free_port, start_server, version_of, wait_ready

OOS = "oos"
# every reaction certain: the feedback says exactly which kind of answer the user got
CERTAIN = TrafficConfig(
    p_thumbs_up_if_right=1.0,
    p_resolved_if_right=0.0,
    p_thumbs_down_if_wrong=1.0,
    p_escalated_if_wrong=0.0,
    p_abandoned_if_wrong=0.0,
    p_escalated_if_fallback=1.0,
    p_abandoned_if_fallback=0.0,
)
# what a user may say after each kind of answer ("" = nothing)
ALLOWED = {
    "right": {"thumbs_up", "resolved", ""},
    "wrong": {"thumbs_down", "escalated", "abandoned", ""},
    "fallback": {"escalated", "abandoned", ""},
}


def cases_of(frame: pd.DataFrame) -> list[str]:
    return [case_of(p, f, t) for p, f, t in zip(frame["predicted_intent"], frame["fallback"], frame["true_intent"])]


# --- pure parts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case, draw, expected",
    [
        ("right", 0.0, "thumbs_up"),
        ("right", 0.49, "thumbs_up"),
        ("right", 0.5, "resolved"),
        ("right", 0.79, "resolved"),
        ("right", 0.8, ""),
        ("wrong", 0.44, "thumbs_down"),
        ("wrong", 0.45, "escalated"),
        ("wrong", 0.69, "escalated"),
        ("wrong", 0.7, "abandoned"),
        ("wrong", 0.89, "abandoned"),
        ("wrong", 0.9, ""),
        ("fallback", 0.69, "escalated"),
        ("fallback", 0.7, "abandoned"),
        ("fallback", 0.9, ""),
        ("fallback", 0.999, ""),
    ],
)
def test_reaction_slices(case, draw, expected):
    assert react(case, draw, TrafficConfig()) == expected


@pytest.mark.parametrize(
    "predicted, fallback, truth, case, correct",
    [
        ("order_status", False, "order_status", "right", True),
        ("order_status", False, "refund_status", "wrong", False),
        ("order_status", False, OOS, "wrong", False),  # answered something it should have handed off
        ("order_status", True, OOS, "fallback", True),  # handed off an out-of-scope message: right thing to do
        ("order_status", True, "order_status", "fallback", False),  # handed off what it could have answered
        ("order_status", True, "new_intent", "fallback", False),
    ],
)
def test_answer_cases(predicted, fallback, truth, case, correct):
    assert case_of(predicted, fallback, truth) == case
    assert is_correct(predicted, fallback, truth, OOS) is correct


@pytest.mark.parametrize(
    "values, fragment",
    [
        ({"p_thumbs_up_if_right": 0.8, "p_resolved_if_right": 0.3}, "p_thumbs_up_if_right (0.8) + p_resolved_if_right"),
        ({"p_abandoned_if_wrong": 0.4}, "= 1.1 must be at most 1"),
        ({"p_escalated_if_fallback": 0.9}, "reactions to a fallback answer"),
        ({"p_thumbs_up_if_right": -0.1}, "traffic.p_thumbs_up_if_right is -0.1"),
        ({"concurrency": 0}, "traffic.concurrency"),
        ({"timeout_s": 0}, "traffic.timeout_s"),
    ],
)
def test_bad_traffic_config_is_a_clear_error(values, fragment, tmp_path):
    with pytest.raises(FlywheelError, match=fragment.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        TrafficConfig(**values)
    path = tmp_path / "bad.yaml"
    path.write_text("traffic:\n" + "".join(f"  {k}: {v}\n" for k, v in values.items()))
    with pytest.raises(FlywheelError, match="traffic"):
        load_config("traffic", path)


def test_a_route_decides_each_messages_arm_from_the_same_draw_as_a_percent():
    """The local loop passes its Knative route (LocalCluster.arm_for); a percent is the same walk over the draw."""
    examples = pd.DataFrame({"text": [f"message {i}" for i in range(400)], "intent": ["order_status"] * 400})
    cfg = TrafficConfig(seed=3)
    by_draw = plan_messages(examples, lambda d: CANARY if d < 0.3 else STABLE, cfg, 5)
    assert [m.arm for m in plan_messages(examples, by_percent(30), cfg, 5)] == [m.arm for m in by_draw]
    assert 80 < sum(m.arm == CANARY for m in by_draw) < 160
    with pytest.raises(FlywheelError, match="arm 'shadow'"):
        plan_messages(examples, lambda d: "shadow", cfg, 5)
    with pytest.raises(FlywheelError, match="canary_percent or route, not both"):
        simulate(
            examples,
            "http://127.0.0.1:1",
            "http://127.0.0.1:1",
            endpoint=NAME,
            canary_percent=10,
            cfg=cfg,
            phase="p",
            route=by_percent(10),
        )


def test_default_config_has_the_traffic_section():
    assert load_config("traffic") == TrafficConfig()


def test_unreachable_predictor_is_an_error_naming_its_url():
    url = f"http://127.0.0.1:{free_port()}"
    examples = pd.DataFrame({"text": ["where is my order"], "intent": ["order_status"]})
    with pytest.raises(FlywheelError, match=f"predictor.*unreachable at {url}/v2/health/ready"):
        simulate(examples, url, "http://127.0.0.1:1", endpoint=NAME, cfg=TrafficConfig(timeout_s=2), phase="p")


# --- against the running predictor and collector ----------------------------------------------


def with_threshold(tiny_artifact: dict, folder, threshold: float) -> str:
    """A copy of the tiny model with another fallback threshold and no out-of-scope hand-off, so the
    threshold alone decides (and a manifest, hence a digest, of its own)."""
    shutil.copytree(tiny_artifact["artifact"], folder)
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "fallback_threshold": threshold, "scope_threshold": None}))
    (folder / MANIFEST).unlink()
    write_manifest(folder)
    return str(folder)


@pytest.fixture(scope="module")
def servers(tiny_artifact, tmp_path_factory):
    """`flywheel collect` on a SQLite store, and `flywheel serve` logging to it.

    The stable model answers everything (threshold 0), rightly or wrongly; the canary hands everything
    off (threshold 1): every kind of answer is common whatever the tiny random model learned.
    """
    work = tmp_path_factory.mktemp("traffic-work")
    store = f"sqlite:///{work / 'conversations.db'}"
    collector_port, port = free_port(), free_port()
    env = {**os.environ, "FLYWHEEL_WORK_DIR": str(work)}
    stable = with_threshold(tiny_artifact, work / "answers-all", 0.0)
    canary = with_threshold(tiny_artifact, work / "hands-off-all", 1.0)
    versions = {"stable": version_of(stable), "canary": version_of(canary)}
    arms_dir = work / "arms"  # the ConfigMap flywheel-arms, as the kubelet mounts it for the collector
    arms_dir.mkdir()
    for arm, version in versions.items():
        (arms_dir / arm).write_text(version)
    collector = subprocess.Popen(
        [sys.executable, "-m", "scripts.cli", "collect", "--http_port", str(collector_port), "--store_url", store,
         "--sqlite_synchronous", "NORMAL", "--arms_dir", str(arms_dir),
         "--report_dir", str(work / "collector-reports")],
        cwd=PROJECT_ROOT, env=env, stdout=open(work / "collector.log", "w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    collector_url = f"http://127.0.0.1:{collector_port}"
    proc = start_server(
        [
            "--stable",
            stable,
            "--canary",
            canary,
            "--logger_url",
            f"{collector_url}/",
            "--max_text_chars",
            "200",
        ],
        work,
        port,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, base, work)
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"{collector_url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert collector.poll() is None and time.time() < deadline, (work / "collector.log").read_text()
            time.sleep(0.3)
        engine = open_store(store)
        yield {
            "predictor": base,
            "collector": collector_url,
            "engine": engine,
            "work": work,
            "store": store,
            "versions": versions,
        }
        engine.dispose()
    finally:
        for p in (proc, collector):
            p.send_signal(signal.SIGTERM)
        for p in (proc, collector):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def labelled(sample_df: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """n messages: half of intents the tiny model knows, a quarter out of scope, a quarter it never learned."""
    known = set(sorted(set(sample_df["intent"]) - {OOS})[:5])  # what conftest's tiny_artifact is trained on
    groups = [
        sample_df[sample_df["intent"].isin(known)],
        sample_df[sample_df["intent"] == OOS],
        sample_df[~sample_df["intent"].isin(known | {OOS})],
    ]
    sizes = [n - 2 * (n // 4), n // 4, n // 4]
    picked = pd.concat(g.sample(n=k, replace=True, random_state=seed) for g, k in zip(groups, sizes))
    return picked.sample(frac=1, random_state=seed)[["text", "intent"]].reset_index(drop=True)


def feedback_counts(collector_url: str) -> Counter:
    """The collector's flywheel_feedback_total by (arm, kind, model_version)."""
    found = Counter()
    for family in text_string_to_metric_families(httpx.get(f"{collector_url}/metrics").text):
        for sample in family.samples:
            if sample.name == "flywheel_feedback_total":
                found[(sample.labels["arm"], sample.labels["kind"], sample.labels["model_version"])] += sample.value
    return found


def wait_logged(engine, request_ids: set[str], timeout: float = 60) -> None:
    """The predictor's logger posts after answering: wait until every call's request and response are stored."""
    ie = sa.table("inference_events", sa.column("event_id"))
    deadline = time.time() + timeout
    while True:
        with engine.connect() as conn:
            stored = [r[0] for r in conn.execute(sa.select(ie.c.event_id))]
        counts = Counter(i for i in stored if i in request_ids)
        if all(counts[i] == 2 for i in request_ids):
            return
        assert time.time() < deadline, f"{sum(counts[i] < 2 for i in request_ids)} calls not fully logged"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def canary_run(servers, sample_df):
    """400 messages, 30% to the canary, the default reactions; then everything the store holds about them."""
    examples = labelled(sample_df, 400, seed=1)
    seen: list[tuple[int, int]] = []
    counted_before = feedback_counts(servers["collector"])
    frame = simulate(
        examples,
        servers["predictor"],
        servers["collector"],
        endpoint=NAME,
        canary_percent=30,
        cfg=TrafficConfig(),
        phase="canary",
        progress=lambda done, total: seen.append((done, total)),
    )
    ids = set(frame["request_id"])
    wait_logged(servers["engine"], ids)
    deadline, given = time.time() + 15, int((frame["feedback"] != "").sum())
    while True:  # feedback that beat its answer to the collector is counted once the answer is stored
        counted = feedback_counts(servers["collector"]) - counted_before
        if counted.total() >= given or time.time() > deadline:
            break
        time.sleep(0.2)
    _, rows, _ = window_rows(
        servers["engine"], frame["time"].min() - timedelta(minutes=1), frame["time"].max() + timedelta(minutes=1)
    )
    with servers["engine"].connect() as conn:
        feedback = [
            dict(r._mapping)
            for r in conn.execute(sa.select(feedback_events).where(feedback_events.c.request_id.in_(sorted(ids))))
        ]
    return {
        "examples": examples,
        "frame": frame,
        "rows": {r["request_id"]: r for r in rows},
        "feedback": feedback,
        "counted": counted,
        "progress": seen,
    }


def test_every_message_gets_a_row_in_send_order(canary_run):
    frame, examples = canary_run["frame"], canary_run["examples"]
    assert list(frame.columns) == COLUMNS
    assert len(frame) == 400 and frame["request_id"].is_unique and frame["conversation_id"].is_unique
    assert frame["text"].tolist() == examples["text"].tolist()
    assert frame["true_intent"].tolist() == examples["intent"].tolist()
    assert (frame["status"] == 200).all() and (frame["error"] == "").all()
    assert (frame["phase"] == "canary").all() and frame["time"].dt.tz is not None
    assert frame["fallback"].notna().all() and (frame["latency_ms"] > 0).all()
    expected = [
        is_correct(p, f, t, OOS) for p, f, t in zip(frame["predicted_intent"], frame["fallback"], frame["true_intent"])
    ]
    assert frame["correct"].tolist() == expected
    done = [d for d, _ in canary_run["progress"]]
    assert done[0] == 0 and done[-1] == 400 and done == sorted(done)
    assert {t for _, t in canary_run["progress"]} == {400}


def test_routing_honours_the_canary_share(canary_run):
    frame = canary_run["frame"]
    canary = int((frame["arm"] == "canary").sum())
    sd = np.sqrt(400 * 0.3 * 0.7)
    assert abs(canary - 120) < 4 * sd, canary  # binomial(400, 0.3): 4 standard deviations
    # each arm runs its own model, and the answers say which
    versions = frame.groupby("arm")["model_version"].unique()
    assert all(len(v) == 1 for v in versions) and versions["stable"][0] != versions["canary"][0]
    # the arm each call reached, as the store recorded it from the predictor's own logger
    assert [canary_run["rows"][i]["arm"] for i in frame["request_id"]] == frame["arm"].tolist()


def test_reactions_follow_the_truth(canary_run):
    frame = canary_run["frame"]
    cases = cases_of(frame)
    for case, kind in zip(cases, frame["feedback"]):
        assert kind in ALLOWED[case], (case, kind)
    counts = Counter(cases)
    assert min(counts[c] for c in ("right", "wrong", "fallback")) >= 30, counts  # each case is tested, not vacuous
    # rates near the configured ones where a case is common enough to tell (4 standard deviations)
    cfg = TrafficConfig()
    for case, reactions in TrafficConfig.REACTIONS.items():
        kinds = [k for c, k in zip(cases, frame["feedback"]) if c == case]
        if len(kinds) < 50:
            continue
        for kind, name in reactions:
            p = getattr(cfg, name)
            assert abs(kinds.count(kind) - p * len(kinds)) < 4 * np.sqrt(len(kinds) * p * (1 - p)) + 1, (case, kind)


def test_the_store_holds_exactly_the_reported_feedback(canary_run):
    frame, stored, rows = canary_run["frame"], canary_run["feedback"], canary_run["rows"]
    given = frame[frame["feedback"] != ""]
    assert len(given) > 50
    assert Counter(f["kind"] for f in stored) == Counter(given["feedback"])
    by_request = {f["request_id"]: f for f in stored}
    assert len(by_request) == len(stored)  # one reaction per message
    for request_id, conversation_id, kind in zip(given["request_id"], given["conversation_id"], given["feedback"]):
        f = by_request[request_id]
        assert (f["kind"], f["conversation_id"], f["source"]) == (kind, conversation_id, "flywheel-traffic-simulator")
    # the collector's metric counts each reaction for the arm and model version that answered
    expected = Counter(zip(given["arm"], given["feedback"], given["model_version"]))
    assert +canary_run["counted"] == expected
    # the export folds each reaction into the answer it names, next to the logged request and response
    for r in frame.itertuples():
        row = rows[r.request_id]
        assert (row["text"], row["predicted_intent"], row["fallback"], row["conversation_id"]) == (
            r.text,
            r.predicted_intent,
            r.fallback,
            r.conversation_id,
        )
        assert row["model_version"] == r.model_version
        assert row["thumbs"] == {"thumbs_up": "up", "thumbs_down": "down"}.get(r.feedback, "")
        for kind in ("escalated", "abandoned", "resolved"):
            assert row[kind] == (r.feedback == kind)


def test_canary_analysis_counts_per_arm_what_each_arm_was_sent(canary_run, servers):
    """Two different models, attributed only from what KServe's logger really sends (no arm in the events):
    the counts `canary-analysis --store-url` decides on equal the traffic each arm got and its reactions."""
    frame = canary_run["frame"]
    since, until = frame["time"].min() - timedelta(seconds=1), frame["time"].max() + timedelta(seconds=1)
    # `until` as the analysis would see it a while later: no request is still in flight
    seen = store_arm_metrics(servers["store"], servers["versions"], since, until + timedelta(minutes=2), 1000.0)
    for arm in ("stable", "canary"):
        sent = frame[frame["arm"] == arm]
        got = seen[arm]
        assert len(sent) > 50, arm  # both arms got real traffic: the comparison is not vacuous
        assert (got.requests, got.errors, got.model_version) == (len(sent), 0, servers["versions"][arm])
        assert got.fallbacks == int(sent["fallback"].sum())
        assert (got.thumbs_up, got.thumbs_down, got.escalations) == tuple(
            int((sent["feedback"] == kind).sum()) for kind in ("thumbs_up", "thumbs_down", "escalated")
        )
    assert seen["canary"].fallbacks == seen["canary"].requests and seen["stable"].fallbacks == 0  # the two models
    assert seen["unknown"].requests == 0  # every call was answered: nothing left that no arm can be charged with


def test_same_seed_same_traffic_other_offset_other_draws(servers, sample_df):
    examples = labelled(sample_df, 60, seed=2)
    args, to = (examples, servers["predictor"], servers["collector"]), {"endpoint": NAME, "canary_percent": 50}
    first = simulate(*args, **to, cfg=TrafficConfig(seed=11), phase="repeat")
    again = simulate(*args, **to, cfg=TrafficConfig(seed=11), phase="repeat")
    other = simulate(*args, **to, cfg=TrafficConfig(seed=11), phase="repeat", seed_offset=1)
    assert first["arm"].tolist() == again["arm"].tolist()
    assert first["arm"].tolist() != other["arm"].tolist()
    assert not set(first["request_id"]) & set(again["request_id"])  # a rerun is new traffic, not a redelivery
    # the same answer gets the same reaction; answers themselves may differ where a near-tie falls
    # differently in another micro-batch (padding changes the logits by ~1e-6)
    same = [
        a == b
        for a, b in zip(
            zip(first["predicted_intent"], first["fallback"]), zip(again["predicted_intent"], again["fallback"])
        )
    ]
    assert sum(same) >= 54
    assert first["feedback"][same].tolist() == again["feedback"][same].tolist()
    assert set(first["feedback"]) - {""}, "reactions were drawn"
    # certain reactions: the feedback names the kind of answer each user got
    certain = simulate(*args, **to, cfg=CERTAIN, phase="certain")
    expected = {"right": "thumbs_up", "wrong": "thumbs_down", "fallback": "escalated"}
    assert certain["feedback"].tolist() == [expected[c] for c in cases_of(certain)]
    assert set(cases_of(certain)) == set(expected)


def test_no_canary_share_sends_everything_to_stable(servers, sample_df):
    frame = simulate(
        labelled(sample_df, 40, seed=3),
        servers["predictor"],
        servers["collector"],
        endpoint=NAME,
        canary_percent=0,
        cfg=TrafficConfig(),
        phase="stable",
    )
    assert (frame["arm"] == "stable").all() and (frame["status"] == 200).all()


def test_failed_requests_are_rows_until_too_many_fail(servers, sample_df):
    examples = labelled(sample_df, 40, seed=4)
    examples.loc[7, "text"] = "x" * 300  # the predictor refuses texts over 200 characters (400)
    before = count_rows(servers["engine"])["feedback"]
    frame = simulate(
        examples,
        servers["predictor"],
        servers["collector"],
        endpoint=NAME,
        canary_percent=0,
        cfg=CERTAIN,
        phase="errors",
    )
    bad = frame.iloc[7]
    assert bad["status"] == 400 and "300 characters" in bad["error"]
    assert bad["predicted_intent"] == "" and not bad["feedback"]
    assert pd.isna(bad["fallback"]) and pd.isna(bad["correct"]) and pd.isna(bad["confidence"])
    assert (frame.drop(index=7)["status"] == 200).all()
    assert count_rows(servers["engine"])["feedback"] - before == 39  # certain reactions: one per answered message

    examples.loc[[3, 11], "text"] = "   "  # now 3 of 40 fail: 7.5%
    with pytest.raises(FlywheelError, match=r"3 of 40 requests failed.*text 0 is empty"):
        simulate(
            examples,
            servers["predictor"],
            servers["collector"],
            endpoint=NAME,
            canary_percent=0,
            cfg=CERTAIN,
            phase="errors",
        )


def test_readiness_is_checked_before_sending(servers):
    examples = pd.DataFrame({"text": ["where is my order"], "intent": ["order_status"]})
    cfg = TrafficConfig(timeout_s=5)
    down = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(FlywheelError, match=f"collector.*unreachable at {down}/healthz"):
        simulate(examples, servers["predictor"], down, endpoint=NAME, cfg=cfg, phase="p")
    with pytest.raises(FlywheelError, match="model 'no-such-model' on the predictor is not ready"):
        simulate(examples, servers["predictor"], servers["collector"], endpoint="no-such-model", cfg=cfg, phase="p")
    with pytest.raises(FlywheelError, match="lack column"):
        simulate(
            examples.rename(columns={"intent": "label"}), servers["predictor"], down, endpoint=NAME, cfg=cfg, phase="p"
        )
    with pytest.raises(FlywheelError, match="canary_percent is 130"):
        simulate(
            examples, servers["predictor"], servers["collector"], endpoint=NAME, canary_percent=130, cfg=cfg, phase="p"
        )


def test_cli_replays_a_dataset_and_reports_per_arm(servers, tmp_path, capsys):
    from model.core.config import SAMPLE_DATA
    from scripts.cli import main

    out, reports = tmp_path / "rows.parquet", tmp_path / "reports"
    common = ["--predictor_url", servers["predictor"], "--collector_url", servers["collector"], "--endpoint", NAME,
              "--report_dir", str(reports)]  # fmt: skip
    args = ["traffic", "--limit", "40", "--canary_percent", "50", "--phase", "cli", "--out", str(out), *common]
    assert main(args) == 0, capsys.readouterr().err
    frame = pd.read_parquet(out)
    assert (
        len(frame) == 40
        and set(frame["phase"]) == {"cli"}
        and set(frame["text"]) <= set(pd.read_csv(SAMPLE_DATA, dtype=str, keep_default_na=False)["text"])
    )
    result = json.loads((reports / "traffic.json").read_text())
    assert sum(a["requests"] for a in result["arms"].values()) == 40
    for arm, a in result["arms"].items():
        rows = frame[frame["arm"] == arm]
        assert a["accuracy"] == round(float(rows["correct"].astype(bool).mean()), 4)
        assert sum(a["feedback"].values()) == int((rows["feedback"] != "").sum())
    assert "| canary |" in (reports / "traffic.md").read_text()

    code = main(["traffic", "--p_abandoned_if_wrong", "0.5", "--out", str(tmp_path / "bad.parquet"), *common])
    assert code == 2 and "p_abandoned_if_wrong (0.5)" in capsys.readouterr().err
    assert not (tmp_path / "bad.parquet").exists()
