"""The GPU path where no GPU is: `make check-gpu` says there is none and fails; the device choice that
training, the drift check and prepare's embeddings share picks CUDA when torch sees it."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from data_checks import embeddings
from model.artifact import network
from model.core.config import PROJECT_ROOT


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU, check-gpu trains Banking77")
def test_check_gpu_without_cuda_says_so_and_exits_non_zero():
    done = subprocess.run(
        [sys.executable, "-m", "scripts.check_gpu"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2
    assert "no CUDA device here" in done.stderr
    assert done.stdout == "", "no figures without a GPU"


def test_auto_picks_cuda_exactly_when_torch_sees_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert network.pick_device("auto") == torch.device("cuda")
    assert network.pick_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert network.pick_device("auto") == torch.device("cpu")


def test_embeddings_pick_their_device_as_training_does(monkeypatch, tiny_bert):
    asked = []

    def recording(name: str) -> torch.device:
        asked.append(name)
        return torch.device("cpu")

    monkeypatch.setattr(network, "pick_device", recording)
    embeddings._loaded.cache_clear()
    try:
        embedder = embeddings.Embedder(str(tiny_bert), cache_dir=None)
        vectors = embedder(["where is my parcel", "refund please"])
    finally:
        embeddings._loaded.cache_clear()  # later tests load the encoder with the real choice
    assert asked == ["auto"] and embedder.device == "cpu"
    assert vectors.shape == (2, 32)


def test_check_gpu_reads_a_real_training_run_and_flags_one_off_the_gpu(tiny_artifact, tmp_path):
    """The figures and verdict of `make check-gpu`, from a real train step's outputs (on the CPU, so
    every GPU check must fail) and a real embedding pass."""
    from model.train.steps import Trained
    from scripts import check_gpu

    test_csv = tmp_path / "test.csv"
    pd.DataFrame({"text": ["where is my parcel", "refund please", "hello"], "label": [0, 1, 2]}).to_csv(test_csv)
    meta = json.loads((Path(tiny_artifact["artifact"]) / "meta.json").read_text())
    summary = Trained(**{f.name: tiny_artifact[f.name] for f in dataclasses.fields(Trained)})
    found = check_gpu.figures("no GPU", summary, meta, 0, check_gpu.embed(test_csv))
    assert found["test_accuracy"] == round(tiny_artifact["metrics"]["accuracy"], 4)
    assert found["onnx_max_abs_probability_diff"] <= meta["config"]["train"]["onnx_tolerance"]
    assert found["embedding_shape"] == [3, 384] and found["epochs"] == 2
    assert check_gpu.problems(found) == [
        "training ran on cpu",
        "embedding ran on cpu",
        "training ran in fp32, not under autocast",
    ]
    gpu_run = {**found, "device": "cuda", "embedding_device": "cuda:0", "precision": "bf16"}
    assert check_gpu.problems(gpu_run) == []
    without_onnx = {k: v for k, v in meta.items() if k != "onnx"}  # train.export_onnx: false
    on_gpu = dataclasses.replace(summary, device="cuda", precision="bf16")
    unexported = check_gpu.figures("GPU", on_gpu, without_onnx, 0, {})
    assert check_gpu.problems({**unexported, "embedding_device": "cuda"}) == [
        "no ONNX export to check (train.export_onnx is off in the config)"
    ]
