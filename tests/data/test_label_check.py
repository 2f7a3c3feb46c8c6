"""The label check: cross-validated confident learning flags likely-wrong new labels (synthetic vectors,
no encoder), they leave the prepared set for the recheck section, and a second look keeps its label
(the real MiniLM, through prepare)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from model.core.config import DataConfig, PiiConfig, PrepareConfig
from model.data.examples import COLUMNS
from model.loop.annotator import recheck_score
from model.prepare.label_check import check_new_labels
from model.prepare.labelling import Labelled
from model.prepare.recheck import second_look_texts, write_recheck
from model.prepare.steps import prepare_step
from tests.helpers.registry import local_registry
from tests.helpers.snapshots import make_snapshot

INTENTS = ("billing", "delivery", "refund", "password")
CFG = PrepareConfig(log_to_mlflow=False)


def _rows(source: str, spec: list[tuple[str, str]], prefix: str) -> pd.DataFrame:
    """Rows of ``(given intent, intent the text really is)``; the text names the truth for ``_embed``."""
    texts = [f"{prefix} {n} {true}" for n, (_, true) in enumerate(spec)]
    return pd.DataFrame(
        {
            "text": texts,
            "intent": [given for given, _ in spec],
            "entities": "[]",
            "source": source,
            "conversation_id": "",
            "split": "train" if source == "seed" else "",
        }
    )[COLUMNS]


def _embed(texts: list[str]) -> np.ndarray:
    """One tight cluster per true intent (the text's last word), a unit vector each, as MiniLM gives."""
    centres = {intent: np.eye(16)[n] * 4 for n, intent in enumerate(INTENTS)}
    rng = np.random.default_rng(0)
    vectors = np.stack([centres.get(t.split()[-1], np.ones(16)) + rng.normal(0, 0.5, 16) for t in texts])
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _labelled(seed: list, human: list, auto: list = ()) -> Labelled:
    empty = pd.DataFrame(columns=COLUMNS)
    return Labelled(
        base=_rows("seed", seed, "seed"),
        new_human=_rows("human", human, "human") if human else empty,
        auto=_rows("auto", list(auto), "auto") if auto else empty,
        review=pd.DataFrame(),
        relabelled=0,
        conflicts=0,
    )


def _right(intent: str, n: int) -> list[tuple[str, str]]:
    return [(intent, intent)] * n


SEED = [row for intent in INTENTS for row in _right(intent, 25)]
WRONG = ("billing", "delivery")  # labelled billing, reads as delivery


@pytest.mark.parametrize(
    "case, seed, human, auto, flagged",
    [
        ("a clear mistake among new labels is flagged", SEED, _right("refund", 6) + [WRONG], (), [("human", 6)]),
        ("right labels are not", SEED, _right("refund", 6) + _right("delivery", 4), (), []),
        ("a wrong auto-label too", SEED, _right("refund", 3), _right("password", 3) + [WRONG], [("auto", 3)]),
        ("the seed set is the reference: never flagged", SEED + [WRONG], _right("refund", 3), (), []),
    ],
)
def test_flags_new_mistakes_only(case, seed, human, auto, flagged):
    labelled = _labelled(seed, human, auto)
    human_file = labelled.new_human[["text", "intent"]]
    got = check_new_labels(labelled, human_file, _embed, CFG, "oos")
    assert [(s, int(t.split()[1])) for s, t in zip(got.flagged["source"], got.flagged["text"])] == flagged, case
    assert len(got.kept) == len(labelled.examples()) - len(flagged)
    assert not set(got.flagged["text"]) & set(got.kept["text"])
    if flagged:
        assert list(got.flagged["suggested_intent"]) == ["delivery"] and got.flagged["given_probability"].iloc[0] < 0.5
    assert sum(got.checked.values()) == len(human) + len(auto) and got.skipped is None


def test_a_confirmed_label_is_kept():
    labelled = _labelled(SEED, _right("refund", 6) + [WRONG])
    human = labelled.new_human[["text", "intent"]].assign(second_look=lambda d: d.index == 6)
    got = check_new_labels(labelled, human, _embed, CFG, "oos")
    assert got.flagged.empty and got.confirmed == 1 and got.checked == {"human": 6}
    assert "human 6 delivery" in set(got.kept["text"])


def test_intents_too_small_for_the_folds_are_left_unchecked():
    # "password" has 3 rows, fewer than 5 folds: neither checked nor used; the others are
    seed = [row for intent in INTENTS[:3] for row in _right(intent, 25)] + _right("password", 2)
    labelled = _labelled(seed, [("password", "password"), WRONG])
    got = check_new_labels(labelled, labelled.new_human[["text", "intent"]], _embed, CFG, "oos")
    assert got.unchecked_intents == {"password": 3} and got.checked == {"human": 1}
    assert list(got.flagged["text"]) == ["human 1 delivery"]


@pytest.mark.parametrize(
    "case, seed, cfg, skipped",
    [
        ("one intent big enough", _right("billing", 30) + _right("refund", 3), CFG, "fewer than 2 intents"),
        ("no new label in the pool", SEED, CFG, "no new label"),
        ("check off", SEED, PrepareConfig(label_check=False), None),
    ],
)
def test_nothing_to_check_changes_nothing(case, seed, cfg, skipped):
    human = [("refund", "refund")] * 3 if case != "no new label in the pool" else [("oos", "billing")]
    labelled = _labelled(seed, human)
    got = check_new_labels(labelled, labelled.new_human[["text", "intent"]], _embed, cfg, "oos")
    assert got.flagged.empty and len(got.kept) == len(labelled.examples()), case
    assert (got.skipped or "").startswith(skipped or ""), case
    assert got.summary(cfg)["enabled"] is cfg.label_check


def test_recheck_section_round_trip(tmp_path):
    labelled = _labelled(SEED, _right("refund", 6) + [WRONG])
    got = check_new_labels(labelled, labelled.new_human[["text", "intent"]], _embed, CFG, "oos")
    files = write_recheck(got.flagged, tmp_path)
    table = pd.read_csv(files["recheck_csv"], dtype=str, keep_default_na=False)
    assert table[["text", "given_intent", "suggested_intent", "recheck", "intent"]].values.tolist() == [
        ["human 6 delivery", "billing", "delivery", "yes", ""]
    ]
    tasks = json.loads((tmp_path / "recheck_tasks.json").read_text())
    assert tasks[0]["data"]["recheck"] is True and tasks[0]["data"]["suggested_intent"] == "delivery"
    assert tasks[0]["predictions"][0]["result"][0]["value"]["choices"] == ["billing"]
    assert second_look_texts(tmp_path / "recheck.csv") == set()  # nobody filled it in yet
    table.assign(intent="billing").to_csv(tmp_path / "recheck.csv", index=False)
    assert second_look_texts(tmp_path / "recheck.csv") == {"human 6 delivery"}
    assert second_look_texts(tmp_path / "recheck_tasks.json") == set()  # exported unannotated
    tasks[0]["annotations"] = [{"was_cancelled": False, "result": tasks[0]["predictions"][0]["result"]}]
    (tmp_path / "export.json").write_text(json.dumps(tasks))
    assert second_look_texts(tmp_path / "export.json") == {"human 6 delivery"}


def test_prepare_leaves_flagged_labels_out_until_a_second_look(tmp_path, sample_df):
    """Through prepare with the real MiniLM: a password question labelled as another intent is flagged,
    left out of examples.parquet and listed for recheck; confirmed, it is trained on; relabelled, it
    takes the new label."""
    intents = ["cancel_order", "reset_password", "order_status"]
    base = sample_df[sample_df["intent"].isin(intents)]
    base_csv = tmp_path / "base.csv"
    base.to_csv(base_csv, index=False)
    snapshot = tmp_path / "snapshot.parquet"
    make_snapshot(base, n=30).to_parquet(snapshot, index=False)
    wrong = "i forgot my password and cannot log in to my account"
    labels = tmp_path / "labels.csv"
    right = ["please cancel the order i placed yesterday", "where is my package right now"]
    pd.DataFrame({"text": [wrong, *right], "intent": ["cancel_order", "cancel_order", "order_status"]}).to_csv(
        labels, index=False
    )
    kw = {
        "data_cfg": DataConfig(),
        "prep_cfg": CFG,
        "pii_cfg": PiiConfig(),
        "reg_cfg": local_registry(tmp_path / "work"),
    }
    kw["work"] = tmp_path / "work"
    result, md = prepare_step(snapshot, base_csv, labels, tmp_path / "first", **kw)
    examples = pd.read_parquet(tmp_path / "first" / "examples.parquet")
    assert wrong not in set(examples["text"]) and set(right) <= set(examples["text"])
    recheck = pd.read_csv(result.review_queue["recheck_csv"], dtype=str, keep_default_na=False)
    row = recheck.set_index("text").loc[wrong]
    assert (row["given_intent"], row["suggested_intent"], row["source"]) == ("cancel_order", "reset_password", "human")
    assert result.label_check["flagged"]["human"] >= 1 and "Label check" in md
    for answer, out in (("cancel_order", "confirmed"), ("reset_password", "relabelled")):
        recheck.assign(intent=answer).to_csv(tmp_path / f"{out}.csv", index=False)
        again, _ = prepare_step(snapshot, base_csv, tmp_path / f"{out}.csv", tmp_path / out, **kw)
        kept = pd.read_parquet(tmp_path / out / "examples.parquet").set_index("text")
        assert kept.loc[wrong, "intent"] == answer and kept.loc[wrong, "source"] == "human", out
        assert again.label_check["confirmed_kept"] == len(recheck)


@pytest.mark.parametrize(
    "flagged, given, true, expected",
    [
        # two planted mistakes (b, c), one caught; one of two right labels flagged; texts compared as prepare does
        (["B  text", "d text"], ["x", "y", "y", "x"], ["x", "x", "x", "x"], (2, 1, 1, 0.5, 0.5)),
        ([], ["x", "x", "x", "x"], ["x", "x", "x", "x"], (0, 0, 0, None, 0.0)),
        (["a text", "b text", "c text", "d text"], ["y", "y", "y", "y"], ["x", "x", "x", "x"], (4, 4, 0, 1.0, None)),
    ],
)
def test_recheck_score(flagged, given, true, expected):
    got = recheck_score(flagged, ["a text", "b text", "c text", "d text"], given, true)
    assert (
        got["planted_mistakes"],
        got["planted_mistakes_caught"],
        got["right_labels_flagged"],
        got["caught_share"],
        got["right_flagged_share"],
    ) == expected
    assert got["labels"] == 4
