"""Data tests: the bundled sample set is fit to be the embedded default."""

from collections import Counter

from model.core.config import SAMPLE_DATA, DataConfig
from model.data.entities import PLACEHOLDER, load_spans
from model.data.examples import assign_splits, load_examples


def test_sample_set_shape():
    df = load_examples(SAMPLE_DATA)
    counts = df[df["intent"] != "oos"]["intent"].value_counts()
    assert len(counts) >= 15
    assert counts.min() >= 30
    assert (df["intent"] == "oos").sum() >= 20
    assert not df["text"].str.casefold().duplicated().any()


def test_sample_set_has_no_personal_data():
    df = load_examples(SAMPLE_DATA)
    assert not df["text"].str.contains(r"@|\d{7,}", regex=True).any()


def test_sample_split_gives_every_intent_test_examples():
    df = assign_splits(load_examples(SAMPLE_DATA), DataConfig())
    test = df[df["split"] == "test"]
    assert set(test["intent"]) == set(df["intent"])


def test_sample_set_has_enough_entities_of_every_type_to_learn_them():
    df = assign_splits(load_examples(SAMPLE_DATA), DataConfig())
    train = Counter(s["type"] for cell in df.loc[df["split"] == "train", "entities"] for s in load_spans(cell))
    types = ("order_id", "tracking_number", "amount", "date", "product", "invoice_number")
    assert set(train) == set(types) and min(train.values()) >= 40, train
    test = Counter(s["type"] for cell in df.loc[df["split"] == "test", "entities"] for s in load_spans(cell))
    assert set(test) == set(types), test  # every type can be scored
    assert not df["text"].str.contains(PLACEHOLDER).any()
    assert (df.loc[df["intent"] == "oos", "entities"] == "[]").all()
