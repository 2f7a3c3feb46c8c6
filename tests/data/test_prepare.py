"""flywheel prepare: redaction before storage, cleaning counts, labelling rules, review queue, balance,
split, output."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from data_checks.pii import Scanner
from model.core.config import DataConfig, PiiConfig, PrepareConfig
from model.core.errors import FlywheelError
from model.data.conversations import COLUMNS, read_snapshot, write_snapshot
from model.data.examples import assign_splits, dataset_digest, in_test_share, load_examples
from model.prepare.cleaning import clean, near_key, normalise
from model.prepare.review_queue import order_queue
from model.prepare.steps import prepare_step
from scripts.cli import main
from tests.helpers.data import write_subset
from tests.helpers.registry import local_registry
from tests.helpers.snapshots import event, make_snapshot

# these tests label texts as other intents on purpose; the label check has its own (tests/data/test_label_check.py)
NO_MLFLOW = PrepareConfig(log_to_mlflow=False, label_check=False)


@pytest.fixture
def base_csv(tmp_path, sample_df) -> Path:
    return write_subset(sample_df, tmp_path / "base.csv", n_intents=5)


@pytest.fixture
def base_df(base_csv) -> pd.DataFrame:
    return pd.read_csv(base_csv, dtype=str, keep_default_na=False)


def _snapshot(tmp_path, base_df, extra: list[dict] = (), n: int = 60) -> Path:
    df = pd.concat([make_snapshot(base_df, n=n), pd.DataFrame(list(extra), columns=COLUMNS)], ignore_index=True)
    return write_snapshot(df, tmp_path / "snapshot.parquet")


def _run(tmp_path, snapshot, base_csv, labels=None, cfg=NO_MLFLOW, out="prepared"):
    work = tmp_path / "work"
    return prepare_step(
        snapshot, base_csv, labels, tmp_path / out,
        data_cfg=DataConfig(), prep_cfg=cfg, pii_cfg=PiiConfig(), reg_cfg=local_registry(work), work=work,
    )  # fmt: skip


def test_cleaning_rules_count_what_they_remove():
    rows = pd.DataFrame(
        {
            "text": [
                "Where is my order 123??",
                "where is my order 456",
                "WHERE IS MY ORDER 123??",  # near, exact dup
                "",
                "   ",
                "???",
                "ok",
                "x" * 400,
                "cancel   my\u200b order",
                "cancel my order",
                "i want to reset my password",  # in the training set already
            ]
        }
    )
    kept, removed = clean(
        rows, min_letters=3, min_chars=3, max_chars=300, known_texts={"i want to reset my password"}, known_near=set()
    )
    assert removed == {
        "empty": 2,
        "noise": 2,
        "too_short": 0,
        "too_long": 1,
        "duplicate_of_training_set": 1,
        "near_duplicate_of_training_set": 0,
        "exact_duplicate": 2,
        "near_duplicate": 1,
    }
    assert list(kept["text"]) == ["Where is my order 123??", "cancel my order"]
    assert list(kept["traffic"]) == [3, 2]  # duplicates become traffic of the kept copy


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("ｗｈｅｒｅ　is my\u00a0parcel", "where is my parcel"),  # full-width, ideographic and no-break spaces
        ("  two\n\nlines\t here ", "two lines here"),
        ("zero\u200bwidth\ufeff", "zerowidth"),
        ("ﬁne", "fine"),  # ligature
    ],
)
def test_normalise(raw, expected):
    assert normalise(raw) == expected


def test_near_key_ignores_case_punctuation_numbers_not_word_order():
    assert near_key("Where is order #123?!") == near_key("where is ORDER 98765")
    assert near_key("return, not exchange") != near_key("exchange, not return")


@pytest.mark.parametrize(
    "rows, expected",
    [
        # (text, confidence, traffic): least confident first, ties (to the hundredth) by traffic
        ([("a", 0.9, 1), ("b", 0.2, 1), ("c", 0.5, 1)], ["b", "c", "a"]),
        ([("a", 0.501, 1), ("b", 0.499, 5), ("c", 0.5, 3)], ["b", "c", "a"]),
        ([("a", 0.3, 2), ("b", 0.3, 2), ("c", 0.1, 1)], ["c", "a", "b"]),
    ],
)
def test_review_queue_order(rows, expected):
    queue = pd.DataFrame(rows, columns=["text", "confidence", "traffic"])
    assert list(order_queue(queue)["text"]) == expected


def test_prepare_end_to_end(tmp_path, base_csv, base_df):
    train_text = base_df["text"].iloc[0]
    intent = sorted(set(base_df["intent"]) - {"oos"})[0]
    extra = [
        event("my email is jane.doe@example.org, where is my order", intent, thumbs="up", i=500),
        event("call me on +44 7911 123456 about my refund", intent, thumbs="down", confidence=0.6, i=501),
        event("???", "oos", i=502),
        event("  ", "oos", i=503),
        event(train_text.upper(), base_df["intent"].iloc[0], thumbs="up", i=504),  # already in the training set
        event("Wherever is my parcel 123", intent, thumbs="up", i=505),
        event("wherever is my parcel 456!!", intent, thumbs="up", i=506),  # near duplicate
        event("is this thing on " * 30, "oos", i=507),  # too long
        event("i'd like to know where my parcel went", intent, confidence=0.5, thumbs="up", i=508),  # unsure
    ]
    snapshot = _snapshot(tmp_path, base_df, extra)
    result, md = _run(tmp_path, snapshot, base_csv, cfg=PrepareConfig(log_to_mlflow=True))
    out = tmp_path / "prepared"
    sheet = json.loads((out / "datasheet.json").read_text())
    removed = sheet["removed"]
    assert (
        removed["empty"],
        removed["noise"],
        removed["too_long"],
        removed["duplicate_of_training_set"],
        removed["near_duplicate"],
    ) == (1, 1, 1, 1, 1)
    assert sheet["pii_found"]["snapshot"] == {"EMAIL": 1, "PHONE": 1}

    df = pd.read_parquet(out / "examples.parquet")
    scanner = Scanner()
    assert not any(scanner.scan(t) for t in df["text"]), "personal data left in the prepared snapshot"
    assert "my email is <EMAIL>, where is my order" in set(df["text"])
    # auto-labels: confident, not fallback, thumbs up; nothing else
    auto = df[df["source"] == "auto"]
    logs = read_snapshot(snapshot)
    ok = logs[(logs["thumbs"] == "up") & (logs["confidence"] >= 0.9) & ~logs["fallback"]]
    assert set(auto["conversation_id"]) <= set(ok["conversation_id"])
    assert "i'd like to know where my parcel went" not in set(df["text"])
    # every auto-label is trained on but those the label check flagged (they wait in the recheck section)
    recheck = pd.read_csv(out / "review" / "recheck.csv", dtype=str, keep_default_na=False)
    assert len(auto) + len(recheck) == result.labelling["auto_labelled"] > 10
    assert result.label_check["flagged"].get("auto", 0) == len(recheck)
    assert not set(recheck["text"]) & set(df["text"])
    # the frozen test set is exactly the old one; nothing new went into it; no text on both sides
    base_split = assign_splits(load_examples(base_csv, DataConfig()), DataConfig())
    assert set(df.loc[df["split"] == "test", "text"]) == set(base_split.loc[base_split["split"] == "test", "text"])
    assert not set(df.loc[df["split"] == "test", "text"].str.casefold()) & set(
        df.loc[df["split"] != "test", "text"].str.casefold()
    )
    # digest: what training will compute from the same file
    assert sheet["dataset_digest"] == dataset_digest(
        assign_splits(load_examples(out / "examples.parquet"), DataConfig())
    )
    # review queue: thumbs-down/escalated/fallback answers, clusters in turns, least confident first
    # within each, in both formats
    tasks = json.loads((out / "review" / "review_tasks.json").read_text())
    by_cluster: dict[int, list[float]] = {}
    for task in tasks:
        by_cluster.setdefault(task["data"]["cluster"], []).append(task["data"]["confidence"])
    assert all(confs == sorted(confs) for confs in by_cluster.values())
    assert {t["data"]["cluster"] for t in tasks[: len(by_cluster)]} == set(by_cluster)
    assert len(tasks) == sheet["labelling"]["review_candidates"] > 5
    candidates = json.loads((out / "review" / "new_intent_candidates.json").read_text())
    assert [c["cluster"] for c in candidates] == sorted(set(by_cluster) - {-1})
    assert tasks[0]["predictions"][0]["result"][0]["value"]["choices"] == [tasks[0]["data"]["predicted_intent"]]
    assert "call me on <PHONE> about my refund" in {t["data"]["text"] for t in tasks}
    csv = pd.read_csv(out / "review" / "review_queue.csv", dtype=str, keep_default_na=False)
    assert list(csv["text"]) == [t["data"]["text"] for t in tasks] and set(csv["intent"]) == {""}
    assert 'name="intent"' in (out / "review" / "review_config.xml").read_text()
    # MLflow: a prepare run with the snapshot as input, digest tag, and the conversation ids
    run = mlflow.get_run(result.mlflow_run_id)
    assert run.data.tags["dataset_digest"] == sheet["dataset_digest"]
    assert run.inputs.dataset_inputs[0].dataset.digest == sheet["dataset_digest"][:32]
    ids = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/conversation_ids.txt").split()
    assert set(ids) == set(df["conversation_id"]) - {""} and ids
    assert "| cleaning rule | removed |" in md


def test_human_labels_win_and_are_never_overwritten(tmp_path, base_csv, base_df):
    base_df = base_df.copy()
    base_df["source"] = "seed"
    base_df.loc[0, "source"] = "human"
    base_df.to_csv(base_csv, index=False)
    human_text, seed_text = base_df["text"].iloc[0], base_df["text"].iloc[1]
    other = sorted(set(base_df["intent"]) - {"oos", base_df["intent"].iloc[0], base_df["intent"].iloc[1]})[0]
    new_text = "the thingy i got doesnt work and i want my money"
    labels = tmp_path / "labels.csv"
    pd.DataFrame(
        {"text": [human_text, seed_text, new_text, "skipped row"], "intent": [other, other, other, ""]}
    ).to_csv(labels, index=False)
    # the model answered the new text confidently with thumbs up, as another intent: the human label wins
    snapshot = _snapshot(tmp_path, base_df, [event(new_text, base_df["intent"].iloc[0], thumbs="up", i=600)])
    result, _ = _run(tmp_path, snapshot, base_csv, labels=labels)
    df = pd.read_parquet(tmp_path / "prepared" / "examples.parquet").set_index("text")
    assert df.loc[human_text, "intent"] == base_df["intent"].iloc[0] and df.loc[human_text, "source"] == "human"
    assert df.loc[seed_text, "intent"] == other and df.loc[seed_text, "source"] == "human"
    assert df.loc[new_text, "intent"] == other and df.loc[new_text, "source"] == "human"
    assert df.loc[new_text, "conversation_id"] == "conv-00200"
    assert result.labelling["human_conflicts_kept"] == 1 and result.labelling["human_relabelled"] == 1


def test_label_studio_round_trip(tmp_path, base_csv, base_df):
    snapshot = _snapshot(tmp_path, base_df)
    _run(tmp_path, snapshot, base_csv, out="first")
    tasks = json.loads((tmp_path / "first" / "review" / "review_tasks.json").read_text())
    intents = sorted(set(base_df["intent"]) - {"oos"})
    for n, task in enumerate(tasks[:4]):  # what Label Studio's JSON export adds once someone labelled a task
        task["id"] = 100 + n
        task["annotations"] = [
            {
                "was_cancelled": False,
                "result": [
                    {"from_name": "intent", "to_name": "text", "type": "choices", "value": {"choices": [intents[0]]}}
                ],
            },
            {
                "was_cancelled": n == 3,
                "result": [
                    {"from_name": "intent", "to_name": "text", "type": "choices", "value": {"choices": [intents[1]]}}
                ],
            },
        ]
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))
    result, _ = _run(tmp_path, snapshot, base_csv, labels=export, out="second")
    df = pd.read_parquet(tmp_path / "second" / "examples.parquet").set_index("text")
    for n, task in enumerate(tasks[:4]):
        assert df.loc[task["data"]["text"], "source"] == "human"
        assert df.loc[task["data"]["text"], "intent"] == (intents[0] if n == 3 else intents[1])
    queued = {t["data"]["text"] for t in json.loads((tmp_path / "second" / "review" / "review_tasks.json").read_text())}
    assert not queued & {t["data"]["text"] for t in tasks[:4]} and len(queued) == len(tasks) - 4


def test_unknown_label_refused_unless_declared_new(tmp_path, base_csv, base_df):
    labels = tmp_path / "labels.csv"
    texts = ["can i gift wrap this", "do you do gift wrapping", "gift wrap option please"]
    pd.DataFrame({"text": texts, "intent": ["gift_wrap"] * 3}).to_csv(labels, index=False)
    snapshot = _snapshot(tmp_path, base_df)
    with pytest.raises(FlywheelError, match=r"labels.csv: unknown intent\(s\) 'gift_wrap' \(line 2\)"):
        _run(tmp_path, snapshot, base_csv, labels=labels)
    assert not (tmp_path / "prepared").exists()
    declared = PrepareConfig(log_to_mlflow=False, new_intents=["gift_wrap"], intent_floor=20)
    # three labels are too few to split and learn (min_examples_per_intent 8): left out until there are more
    result, md = _run(tmp_path, snapshot, base_csv, labels=labels, cfg=declared)
    assert result.labelling["new_intents_waiting_for_labels"] == {"gift_wrap": 3} and "gift_wrap (3)" in md
    assert "gift_wrap" not in set(pd.read_parquet(tmp_path / "prepared" / "examples.parquet")["intent"])
    texts += [
        "gift wrapping available?",
        "wrap it as a present",
        "can you wrap my order as a gift",
        "add gift wrap to order 5",
        "is there gift packaging",
        "please gift wrap the mug",
    ]
    pd.DataFrame({"text": texts, "intent": ["gift_wrap"] * len(texts)}).to_csv(labels, index=False)
    result, md = _run(tmp_path, snapshot, base_csv, labels=labels, cfg=declared, out="prepared-9")
    assert result.below_floor == {"gift_wrap": 9} and "gift_wrap (9)" in md
    sheet = json.loads((tmp_path / "prepared-9" / "datasheet.json").read_text())
    assert "gift_wrap" in sheet["labelling"]["new_intents"] and not sheet["labelling"]["new_intents_waiting_for_labels"]


def test_texts_differing_only_in_case_are_one_example(tmp_path, base_df):
    twin = base_df.iloc[[0]].assign(text=base_df["text"].iloc[0].upper())
    base = tmp_path / "twins.csv"
    pd.concat([base_df, twin]).to_csv(base, index=False)
    result, _ = _run(tmp_path, _snapshot(tmp_path, base_df), base)
    assert result.removed["case_duplicates_in_training_set"] == 1
    texts = pd.read_parquet(tmp_path / "prepared" / "examples.parquet")["text"].str.casefold()
    assert texts.is_unique


def test_cap_leaves_out_auto_labels_only(tmp_path, base_csv, base_df):
    snapshot = _snapshot(tmp_path, base_df, n=90)
    cap = int(base_df.loc[base_df["intent"] != "oos", "intent"].value_counts().max()) + 2
    result, _ = _run(tmp_path, snapshot, base_csv, cfg=PrepareConfig(log_to_mlflow=False, intent_cap=cap))
    df = pd.read_parquet(tmp_path / "prepared" / "examples.parquet")
    counts = df[df["intent"] != "oos"]["intent"].value_counts()
    assert result.capped and counts.max() <= cap
    assert (df["source"] == "seed").sum() == len(base_df)  # no seed example was dropped


def test_human_labels_grow_the_test_set_and_auto_labels_never_do(tmp_path, base_csv, base_df):
    """New human labels join test by the text-hash rule (so a new intent gets test support); the
    seed test rows keep their split; auto-labels (the model's own answers) never enter test."""
    data = DataConfig()
    texts = [f"can you gift wrap item {n} for me" for n in range(40)]
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"text": texts, "intent": ["gift_wrap"] * len(texts)}).to_csv(labels, index=False)
    snapshot = _snapshot(tmp_path, base_df, n=90)
    declared = PrepareConfig(log_to_mlflow=False, new_intents=["gift_wrap"])
    _run(tmp_path, snapshot, base_csv, labels=labels, cfg=declared)
    df = pd.read_parquet(tmp_path / "prepared" / "examples.parquet")
    human = df[df["source"] == "human"]
    expected = {t for t in texts if in_test_share(t, data)}
    assert 0 < len(expected) < len(texts)  # the rule sends some, not all, to test
    assert set(human.loc[human["split"] == "test", "text"]) == expected
    assert (df["source"] == "auto").any() and not ((df["source"] == "auto") & (df["split"] == "test")).any()
    seed = assign_splits(base_df.assign(split=base_df.get("split", "")), data)
    kept = df[df["source"] == "seed"]
    assert set(kept.loc[kept["split"] == "test", "text"]) == set(seed.loc[seed["split"] == "test", "text"])
    frozen = dataclasses.replace(declared, grow_test=False)
    _run(tmp_path, snapshot, base_csv, labels=labels, cfg=frozen, out="frozen")
    df = pd.read_parquet(tmp_path / "frozen" / "examples.parquet")
    assert not ((df["source"] != "seed") & (df["split"] == "test")).any()


def test_bad_snapshots_fail_clearly_and_write_nothing(tmp_path, base_csv, base_df):
    good = make_snapshot(base_df, n=12)
    cases = {
        "missing column": (good.drop(columns=["thumbs"]), r"missing column\(s\) thumbs"),
        "nulls": (
            good.assign(confidence=[None] + [0.9] * 11),
            r"column 'confidence' has 1 null value\(s\), first in row 0",
        ),
        "empty": (good.iloc[:0], r"no events \(empty window\)"),
    }
    for name, (df, message) in cases.items():
        path = tmp_path / f"{name}.parquet"
        df.to_parquet(path, index=False)
        with pytest.raises(FlywheelError, match=f"{name}.parquet: .*{message}"):
            _run(tmp_path, path, base_csv)
    assert not (tmp_path / "prepared").exists()
    with pytest.raises(FlywheelError, match="nope.parquet: no such snapshot"):
        _run(tmp_path, tmp_path / "nope.parquet", base_csv)


def test_refuses_to_overwrite(tmp_path, base_csv, base_df):
    (tmp_path / "prepared").mkdir()
    with pytest.raises(FlywheelError, match="already exists"):
        _run(tmp_path, _snapshot(tmp_path, base_df), base_csv)


def test_cli_prepare(tmp_path, base_csv, base_df):
    snapshot = _snapshot(tmp_path, base_df)
    code = main(
        [
            "prepare",
            "--snapshot",
            str(snapshot),
            "--data",
            str(base_csv),
            "--out",
            str(tmp_path / "o"),
            "--no-log-to-mlflow",
            "--report-dir",
            str(tmp_path / "r"),
        ]
    )
    assert code == 0 and json.loads((tmp_path / "r" / "prepare.json").read_text())["rows"] > len(base_df)
    assert main(["prepare", "--snapshot", str(tmp_path / "missing.parquet"), "--data", str(base_csv)]) == 2


GIFT_WRAP = [
    "can you gift wrap my order",
    "do you offer gift wrapping",
    "i want this gift wrapped please",
    "is gift wrapping available for my order",
    "please add gift wrap to my purchase",
    "could the present be gift wrapped",
    "how much does gift wrapping cost",
    "gift wrap this item for my mum",
    "can my parcel come gift wrapped",
]


def test_new_intent_candidates_named_in_one_decision(tmp_path, base_csv, base_df):
    known = sorted(set(base_df["intent"]) - {"oos"})
    extra = [event(t, known[0], confidence=0.3, fallback=True, i=700 + n) for n, t in enumerate(GIFT_WRAP)]
    snapshot = _snapshot(tmp_path, base_df, extra)
    result, md = _run(tmp_path, snapshot, base_csv, out="first")
    review = tmp_path / "first" / "review"
    assert result.review_queue["new_intent_candidates"] == str(review / "new_intent_candidates.csv")
    table = pd.read_csv(review / "new_intent_candidates.csv", dtype=str, keep_default_na=False)
    members = [{m["text"] for m in json.loads(cell)} for cell in table["members"]]
    (row,) = [n for n, m in enumerate(members) if m & set(GIFT_WRAP)]
    assert members[row] == set(GIFT_WRAP), "the gift-wrap messages are one cluster, and nothing else is in it"
    assert "gift" in table.loc[row, "suggested_name"].split("_") and "**Candidate new intents**" in md
    # one decision names the cluster; a message also labelled one by one keeps that label
    table.loc[row, "name"] = "Gift wrap"
    table.to_csv(tmp_path / "names.csv", index=False)
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"text": [GIFT_WRAP[0]], "intent": [known[1]]}).to_csv(labels, index=False)
    work = tmp_path / "work"
    result, _ = prepare_step(
        snapshot,
        base_csv,
        labels,
        tmp_path / "second",
        data_cfg=DataConfig(),
        prep_cfg=NO_MLFLOW,
        pii_cfg=PiiConfig(),
        reg_cfg=local_registry(work),
        work=work,
        cluster_names=tmp_path / "names.csv",
    )
    df = pd.read_parquet(tmp_path / "second" / "examples.parquet").set_index("text")
    assert set(df.loc[GIFT_WRAP[1:], "intent"]) == {"gift_wrap"} and set(df.loc[GIFT_WRAP, "source"]) == {"human"}
    assert df.loc[GIFT_WRAP[0], "intent"] == known[1]
    assert "gift_wrap" in result.labelling["new_intents"]


def test_auto_labels_past_the_limit_are_left_out_and_counted(tmp_path, base_csv, base_df):
    """auto_label_limit keeps the label check's embedding bounded: past it, a stable pick by text hash
    (the same texts every run) is auto-labelled and the rest are counted."""
    snapshot = _snapshot(tmp_path, base_df, n=90)
    everything, _ = _run(tmp_path, snapshot, base_csv, out="all")
    n = everything.labelling["auto_labelled"]
    assert n > 6 and everything.labelling["auto_labels_over_limit"] == 0
    limited_cfg = dataclasses.replace(NO_MLFLOW, auto_label_limit=5)
    limited, md = _run(tmp_path, snapshot, base_csv, cfg=limited_cfg, out="limited")
    again, _ = _run(tmp_path, snapshot, base_csv, cfg=limited_cfg, out="again")
    assert limited.labelling["auto_labelled"] == 5 and limited.labelling["auto_labels_over_limit"] == n - 5
    assert f"({n - 5} more trusted answers past auto_label_limit left out)" in md

    def auto_texts(folder: str) -> set[str]:
        df = pd.read_parquet(tmp_path / folder / "examples.parquet")
        return set(df.loc[df["source"] == "auto", "text"])

    assert len(auto_texts("limited")) == 5 and auto_texts("limited") == auto_texts("again") < auto_texts("all")


def test_only_the_clustered_head_of_the_review_candidates_is_embedded(tmp_path, base_csv, base_df, monkeypatch):
    """The review queue embeds at most cluster_max_messages candidates, the first in order_queue's order
    (those it clusters); the others still reach the queue, pooled (cluster -1)."""
    embedded: list[str] = []

    def fake_embed(texts, cfg, work):  # two directions, so some candidates cluster
        embedded.extend(texts)
        return [[1.0, 0.0] if len(t) % 2 else [0.0, 1.0] for t in texts]

    monkeypatch.setattr("model.prepare.steps.embed", fake_embed)
    cfg = dataclasses.replace(NO_MLFLOW, cluster_max_messages=4, cluster_min_size=2)
    result, _ = _run(tmp_path, _snapshot(tmp_path, base_df, n=90), base_csv, cfg=cfg)
    queue = pd.read_csv(result.review_queue["csv"], keep_default_na=False)
    candidates = result.labelling["review_candidates"]
    assert candidates > 4 and len(queue) == min(candidates, cfg.review_limit)
    assert embedded == list(order_queue(queue)["text"].head(4))  # the least confident, then most frequent
    assert (queue.loc[~queue["text"].isin(embedded), "cluster"] == -1).all()
