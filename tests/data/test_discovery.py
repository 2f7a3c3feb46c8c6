"""The review queue's clusters and intent discovery: labels spread over clusters, candidate new intents
named from their words, a name typed in Label Studio or the candidates CSV accepted, the purity count."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from model.core.config import PrepareConfig
from model.core.errors import FlywheelError
from model.prepare.clusters import POOLED, cluster_review, diverse_order
from model.prepare.discovery import (
    cluster_purity,
    discovery_figures,
    held_back_found,
    propose_intents,
    read_cluster_names,
    suggest_names,
    write_candidates,
)
from model.prepare.label_studio import NEW_INTENT, NEW_INTENT_CONTROL, intent_name, labelling_config
from model.prepare.review_queue import read_labels, write_queue

CFG = PrepareConfig(log_to_mlflow=False)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _groups(sizes: dict[str, int], seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows of tight groups, each around its own direction; ``confidence`` rising along each group."""
    rng = np.random.default_rng(seed)
    rows, vectors = [], []
    for g, (name, size) in enumerate(sizes.items()):
        centre = np.zeros(16)
        centre[g] = 1.0
        for i in range(size):
            rows.append(
                {
                    "text": f"{name} message {i}",
                    "confidence": round(0.1 + 0.02 * i + 0.001 * g, 3),
                    "traffic": 1,
                    "predicted_intent": "card_arrival",
                    "request_id": f"{name}-{i}",
                    "group": name,
                }
            )
            vectors.append(centre + rng.normal(0, 0.02, 16))
    return pd.DataFrame(rows), _unit(np.array(vectors))


@pytest.mark.parametrize(
    "sizes, first, covered",
    [
        # two tight clusters of 10 and one stray: the first three items cover all three groups
        ({"a": 10, "b": 10, "stray": 1}, 3, {"a", "b", "stray"}),
        # three clusters: one label each before any second one, whatever their sizes
        ({"a": 20, "b": 5, "c": 3}, 3, {"a", "b", "c"}),
    ],
)
def test_queue_takes_clusters_in_turns(sizes, first, covered):
    review, vectors = _groups(sizes)
    queue = diverse_order(cluster_review(review, vectors, CFG)[0], CFG)
    assert set(queue["group"].head(first)) == covered
    assert len(queue) == len(review) and set(queue["text"]) == set(review["text"])
    # within each group, least confident first
    for _, group in queue.groupby("group", sort=False):
        assert list(group["confidence"]) == sorted(group["confidence"])


def test_bigger_clusters_get_more_labels_after_the_first_turn():
    review, vectors = _groups({"big": 40, "small": 4})
    queue = diverse_order(cluster_review(review, vectors, CFG)[0], CFG)
    head = queue["group"].head(12).value_counts()
    # square-root share: 40 vs 4 messages -> about 3 labels to 1 once both have had their first
    assert head["big"] > 2 * head["small"] >= 2
    equal = PrepareConfig(log_to_mlflow=False, cluster_weight=0.0)
    turns = diverse_order(cluster_review(review, vectors, equal)[0], equal)
    assert list(turns["group"].head(8)) == ["big", "small"] * 4


def test_one_offs_are_pooled_and_not_proposed():
    review, vectors = _groups({"a": 6, "b": 2, "c": 1})
    clustered, ordered_vectors = cluster_review(review, vectors, CFG)
    by_group = clustered.groupby("group")["cluster"].agg(set)
    assert by_group["a"] == {1} and by_group["b"] == by_group["c"] == {POOLED}
    candidates = propose_intents(clustered, ordered_vectors, CFG)
    assert [(c["cluster"], c["messages"]) for c in candidates] == [(1, 6)]
    assert {m["request_id"] for m in candidates[0]["members"]} == {f"a-{i}" for i in range(6)}


def test_no_encoder_keeps_the_least_confident_order():
    review, _ = _groups({"a": 3, "b": 3})
    queue = diverse_order(cluster_review(review, None, CFG)[0], CFG)
    assert list(queue["confidence"]) == sorted(review["confidence"]) and set(queue["cluster"]) == {POOLED}


def test_suggested_names_come_from_each_clusters_own_frequent_words():
    names = suggest_names(
        [
            ["my card has not arrived yet", "still waiting for my card to arrive", "when will the card arrive"],
            ["how do i top up by card", "top up failed", "my top up did not go through"],
            ["the", "and it"],  # nothing but stop words
        ],
        2,
    )
    assert names[0].split("_")[0] in {"arrive", "arrived", "waiting"} and "card" not in names[0].split("_")[:1]
    # "top" and "up" are in scikit-learn's stop words, and what this cluster is about; "did" is filler
    assert set(names[1].split("_")) == {"top", "up"}
    assert names[2] == "cluster_3"


def test_candidates_show_typical_messages_nearest_the_centre():
    review, vectors = _groups({"a": 8})
    vectors[3] = _unit(vectors[3:4] + np.eye(16)[5:6] * 0.5)[0]  # one member far from the rest
    clustered, ordered = cluster_review(review, vectors, PrepareConfig(candidate_examples=3, cluster_distance=0.6))
    candidate = propose_intents(clustered, ordered, PrepareConfig(candidate_examples=3))[0]
    assert len(candidate["typical_messages"]) == 3 and "a message 3" not in candidate["typical_messages"]


def test_intent_names_are_lower_snake_case():
    assert intent_name("  Gift-wrap  Option ", "here") == "gift_wrap_option"
    assert intent_name("Änderung der Adresse", "here") == "änderung_der_adresse"
    with pytest.raises(FlywheelError, match="here: new intent name '!!' has no letters"):
        intent_name("!!", "here")


def _queue(n: int = 3) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "text": [f"can you gift wrap it {i}" for i in range(n)],
            "predicted_intent": ["order_status"] * n,
            "confidence": [0.3] * n,
            "traffic": [1] * n,
            "cluster": [1] * n,
            "reasons": ["fallback"] * n,
            "conversation_id": [f"c{i}" for i in range(n)],
            "request_id": [f"r{i}" for i in range(n)],
            "model_version": ["1"] * n,
        }
    )


def test_label_studio_round_trip_of_a_typed_new_intent(tmp_path):
    written = write_queue(_queue(), tmp_path, ["order_status", "refund"])
    config = (tmp_path / "review_config.xml").read_text()
    assert f'<Choice value="{NEW_INTENT}"/>' in config and f'<TextArea name="{NEW_INTENT_CONTROL}"' in config
    assert f'whenChoiceValue="{NEW_INTENT}"' in config
    tasks = json.loads((tmp_path / "review_tasks.json").read_text())

    def annotate(task, choice, typed=None):
        result = [{"from_name": "intent", "to_name": "text", "type": "choices", "value": {"choices": [choice]}}]
        if typed is not None:
            result.append(
                {"from_name": NEW_INTENT_CONTROL, "to_name": "text", "type": "textarea", "value": {"text": [typed]}}
            )
        return {**task, "annotations": [{"was_cancelled": False, "result": result}]}

    export = tmp_path / "export.json"
    labelled = [annotate(tasks[0], NEW_INTENT, "Gift wrap"), annotate(tasks[1], "refund", "ignored text")]
    export.write_text(json.dumps(labelled))
    labels = read_labels(export, {"order_status", "refund"})
    assert list(labels["intent"]) == ["gift_wrap", "refund"]
    # a fixed choice outside the known ones is still a typo; "(new intent)" with no name is refused
    export.write_text(json.dumps([annotate(tasks[0], "gift_wrap")]))
    with pytest.raises(FlywheelError, match=r"unknown intent\(s\) 'gift_wrap'"):
        read_labels(export, {"order_status", "refund"})
    export.write_text(json.dumps([annotate(tasks[0], NEW_INTENT, " ")]))
    with pytest.raises(FlywheelError, match="no name typed in 'new_intent'"):
        read_labels(export, {"order_status", "refund"})
    # the CSV's intent column is refused as a typo, as before
    csv = pd.read_csv(written["csv"], dtype=str, keep_default_na=False).assign(intent="gift_wrap")
    csv.to_csv(tmp_path / "labels.csv", index=False)
    with pytest.raises(FlywheelError, match=r"unknown intent\(s\) 'gift_wrap' \(line 2\)"):
        read_labels(tmp_path / "labels.csv", {"order_status", "refund"})
    assert labelling_config(["a"]).count("<Choice ") == 2


def test_candidates_csv_names_whole_clusters(tmp_path):
    review, vectors = _groups({"gift": 5, "wrap": 4})
    review["entities"] = "[]"
    review.loc[0, "entities"] = json.dumps([{"start": 0, "end": 4, "type": "product", "value": "gift"}])
    clustered, ordered = cluster_review(review, vectors, CFG)
    candidates = propose_intents(clustered, ordered, CFG, ["product"])
    paths = write_candidates(candidates, tmp_path)
    table = pd.read_csv(paths["new_intent_candidates"], dtype=str, keep_default_na=False)
    assert set(table["name"]) == {""} and list(table["messages"]) == ["5", "4"]
    assert json.loads(table.loc[0, "members"])[0].keys() == {"text", "entities"}
    table.loc[0, "name"] = "Gift Wrapping"
    table.to_csv(tmp_path / "named.csv", index=False)
    named = read_cluster_names(tmp_path / "named.csv")
    assert set(named["intent"]) == {"gift_wrapping"} and set(named["text"]) == {f"gift message {i}" for i in range(5)}
    spans = dict(zip(named["text"], named["entities"]))
    assert json.loads(spans["gift message 0"])[0]["type"] == "product" and spans["gift message 1"] == "[]"
    table.loc[1, "members"] = "not json"
    table.loc[1, "name"] = "x"
    table.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(FlywheelError, match=r"bad.csv: line 3: members is not JSON"):
        read_cluster_names(tmp_path / "bad.csv")
    pd.DataFrame({"text": ["a"], "name": ["b"]}).to_csv(tmp_path / "queue.csv", index=False)
    with pytest.raises(FlywheelError, match=r"queue.csv: missing column\(s\) members"):
        read_cluster_names(tmp_path / "queue.csv")


@pytest.mark.parametrize(
    "truths, expected",
    [
        (["a", "a", "b"], ("a", 2 / 3)),
        (["b", "a"], ("a", 0.5)),  # a tie goes to the first name: the same answer every run
        ([], (None, 0.0)),
    ],
)
def test_cluster_purity(truths, expected):
    assert cluster_purity(truths) == pytest.approx(expected)


def test_held_back_found_counts_majority_intents_at_least_70_percent_pure(tmp_path):
    clusters = [
        ["new1"] * 7 + ["old"] * 3,  # 0.7: found
        ["new2"] * 6 + ["old"] * 4,  # 0.6: not pure enough
        ["old"] * 9 + ["new3"],  # majority is a known intent
        ["new1"] * 9 + ["x"],  # new1 again, purer
    ]
    assert held_back_found(clusters, {"new1", "new2", "new3"}) == {"new1": 0.9}
    assert held_back_found(clusters, {"new2"}, min_purity=0.6) == {"new2": 0.6}
    candidates = [{"members": [{"request_id": f"{n}-{i}"} for i in range(len(c))]} for n, c in enumerate(clusters)]
    truth = {f"{n}-{i}": t for n, c in enumerate(clusters) for i, t in enumerate(c)}
    path = tmp_path / "candidates.json"
    path.write_text(json.dumps(candidates))
    figures = discovery_figures(path, truth, {"new1", "new2", "new3"})
    assert (figures["held_back_found"], figures["candidates"], figures["candidates_pure"]) == (1, 4, 3)


def test_simulated_reviewer_names_pure_clusters_one_label_each():
    from model.loop.annotator import name_clusters

    candidates = [
        {"cluster": 1, "members": [{"text": f"p{i}", "request_id": f"p{i}"} for i in range(10)]},
        {"cluster": 2, "members": [{"text": f"m{i}", "request_id": f"m{i}"} for i in range(10)]},
        {"cluster": 3, "members": [{"text": f"q{i}", "request_id": f"q{i}"} for i in range(4)]},
    ]
    truth = {f"p{i}": "new1" if i < 8 else "old" for i in range(10)}  # 0.8 pure
    truth |= {f"m{i}": "new2" if i < 5 else "old" for i in range(10)}  # 0.5: left unnamed
    truth |= {f"q{i}": "new3" for i in range(4)}
    table = pd.DataFrame({"cluster": ["1", "2", "3"], "name": ["", "", ""]})
    named, stats = name_clusters(
        table, candidates, truth, ["new1", "new2", "new3", "old"], decisions=2, error_rate=0.0, seed=7
    )
    # two decisions: the first two clusters judged (each one label), only the pure one named
    assert list(named["name"]) == ["new1", "", ""]
    assert (stats["clusters_judged"], stats["clusters_named"], stats["cluster_labels"]) == (2, 1, 10)
    assert stats["named_texts"] == [f"p{i}" for i in range(10)]
    wrong, _ = name_clusters(
        table, candidates, truth, ["new1", "new2", "new3", "old"], decisions=3, error_rate=1.0, seed=7
    )
    assert wrong.loc[0, "name"] not in {"", "new1"} and wrong.loc[2, "name"] != "new3"
