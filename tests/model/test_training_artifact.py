"""Code tests on a tiny random BERT: training, artifact sealing and verification, determinism."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from model.artifact.manifest import MANIFEST, verify
from model.artifact.predictor import IntentPredictor
from model.core.config import DataConfig
from model.core.errors import FlywheelError
from model.train.steps import train_step
from tests.helpers.registry import local_registry


@pytest.fixture
def trained(tmp_path, tiny_artifact) -> dict:
    """A private copy of the session's tiny artifact, free to be tampered with."""
    copy = tmp_path / "artifact"
    shutil.copytree(tiny_artifact["artifact"], copy)
    return {**tiny_artifact, "artifact": str(copy)}


def test_artifact_holds_every_part_and_verifies(trained):
    folder = Path(trained["artifact"])
    names = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "config.json", "labels.json", "meta.json", "MODEL_CARD.md", MANIFEST} <= names
    assert any(n.startswith("tokenizer") for n in names)
    assert not any(n.endswith((".bin", ".pkl", ".pt")) for n in names), "nothing pickled"
    assert verify(folder) == trained["artifact_digest"]
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["dataset_digest"] == trained["dataset_digest"] and meta["mlflow_run_id"] == trained["mlflow_run_id"]
    assert 0.0 <= meta["fallback_threshold"] <= 1.0
    assert "oos" not in json.loads((folder / "labels.json").read_text())["labels"]


def test_loaded_artifact_predicts_known_intents(trained):
    predictor = IntentPredictor.load(trained["artifact"])
    preds = predictor.predict(["where is my parcel", "I want my money back"])
    assert len(preds) == 2
    assert all(p.intent in predictor.labels and 0.0 < p.confidence <= 1.0 for p in preds)


@pytest.mark.parametrize("victim", ["model.safetensors", "labels.json", "meta.json"])
def test_one_flipped_byte_makes_loading_fail(trained, victim):
    path = Path(trained["artifact"]) / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(FlywheelError, match=f"{victim}: sha256 does not match"):
        IntentPredictor.load(trained["artifact"])


def test_missing_or_extra_file_is_refused(trained):
    folder = Path(trained["artifact"])
    (folder / "notes.txt").write_text("sneaked in")
    with pytest.raises(FlywheelError, match="not listed"):
        verify(folder)
    (folder / "notes.txt").unlink()
    (folder / "labels.json").unlink()
    with pytest.raises(FlywheelError, match="missing"):
        verify(folder)


def test_training_is_deterministic_on_cpu(tmp_path, tiny_artifact):
    work = tmp_path / "work"
    again, _ = train_step(
        Path(tiny_artifact["data"]),
        DataConfig(),
        tiny_artifact["train_cfg"],
        local_registry(work),
        work,
        tmp_path / "b",
    )
    wa = load_file(Path(tiny_artifact["artifact"]) / "model.safetensors")
    wb = load_file(Path(again.artifact) / "model.safetensors")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_existing_artifact_is_never_overwritten(trained, registry_cfg, isolated_work_dir):
    before = verify(trained["artifact"])
    with pytest.raises(FlywheelError, match="already exists"):
        train_step(
            Path(trained["data"]), DataConfig(), trained["train_cfg"], registry_cfg, isolated_work_dir,
            Path(trained["artifact"]),
        )  # fmt: skip
    assert verify(trained["artifact"]) == before
