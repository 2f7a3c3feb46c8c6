"""Checkpoints and resume: a `flywheel train` process killed with SIGKILL mid-training, run again with
the same command, ends with the very weights of an uninterrupted run (CPU, tiny BERT, dropout on),
in the MLflow run it had started; checkpoints are safetensors plus JSON, written whole or not at all.
Two workers killed and resumed: tests/model/test_distributed_training.py."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from model.core.errors import FlywheelError
from model.train import checkpoint
from model.train.fit import fit
from model.train.steps import run_key

FLYWHEEL = str(Path(sys.executable).with_name("flywheel"))


def train_command(data: str, base_model: str, work: Path) -> list[str]:
    """``flywheel train`` with tests/conftest.py's tiny_train_cfg, a checkpoint every 2 steps (of 26)."""
    return [
        FLYWHEEL, "train", "--data", data, "--base-model", base_model, "--work-dir", str(work),
        "--epochs", "2", "--batch-size", "16", "--learning-rate", "1e-3", "--head-learning-rate", "1e-2",
        "--no-freeze-embeddings", "--checkpoint-every", "2",
    ]  # fmt: skip


def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(tiny_artifact, tmp_path):
    work = tmp_path / "work"
    command = train_command(tiny_artifact["data"], tiny_artifact["train_cfg"].base_model, work)
    # mlflow.set_tracking_uri, in an earlier test's training, exports MLFLOW_TRACKING_URI: this run's store
    # is the one in its work folder
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    with (tmp_path / "killed.log").open("w") as log:
        killed = subprocess.Popen(command, stdout=log, stderr=log, env=env)
    try:
        while not any((work / "checkpoints").glob("*/step-*")) and killed.poll() is None:
            time.sleep(0.05)
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    assert killed.returncode == -signal.SIGKILL, "killed mid-training, not finished"
    assert not (work / "models").exists()
    [seen] = work.glob("checkpoints/*/step-*")  # one checkpoint at a time: older ones are removed
    progress = checkpoint.read_progress(seen)
    assert 0 < progress.step < 26 and 0 < progress.batches_done < len(progress.batches), "mid-epoch"

    again = subprocess.run(command, capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = json.loads(again.stdout)
    assert resumed["resumed_from_step"] >= progress.step
    assert f"resuming from {work / 'checkpoints'}" in again.stderr
    # stderr is a pipe, not a terminal: no bar frames (model.core.progress), one line per epoch instead
    assert "\r" not in again.stderr
    epochs = [line.split()[0] for line in again.stderr.splitlines() if line.startswith("epoch=")]
    assert epochs == ["epoch=1", "epoch=2"]

    uninterrupted = Path(tiny_artifact["artifact"])  # the same settings, trained in one go
    weights = load_file(Path(resumed["artifact"]) / "model.safetensors")
    expected = load_file(uninterrupted / "model.safetensors")
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[k], expected[k]) for k in weights), "bit for bit"
    meta = [json.loads((p / "meta.json").read_text()) for p in (Path(resumed["artifact"]), uninterrupted)]
    assert meta[0]["history"] == meta[1]["history"]
    for name in ("accuracy", "macro_f1", "ece"):
        assert resumed["metrics"][name] == tiny_artifact["metrics"][name]

    # the run killed is the run finished: its name, its MLflow run; and no checkpoint is left
    assert Path(resumed["artifact"]).name == progress.run["name"]
    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [(r.info.run_id, r.info.status) for r in runs] == [(progress.run["mlflow_run_id"], "FINISHED")]
    assert resumed["mlflow_run_id"] == progress.run["mlflow_run_id"]
    assert not any((work / "checkpoints").iterdir())


@pytest.fixture
def small_train(sample_df) -> tuple[list[str], list[str]]:
    rows = sample_df[sample_df["intent"].isin(sorted(set(sample_df["intent"]) - {"oos"})[:5])]
    return rows["text"].tolist(), rows["intent"].tolist()


def test_checkpoints_are_safetensors_and_json_and_resume_exactly(tiny_train_cfg, small_train, tmp_path):
    cfg = dataclasses.replace(tiny_train_cfg, max_steps=5, checkpoint_every=2)
    folder = tmp_path / "checkpoints"
    fit(*small_train, cfg, checkpoints=folder, run={"name": "r"})
    [latest] = folder.iterdir()  # step 4 (step 5 is the last: the artifact holds it)
    assert latest.name == "step-000000004"
    assert sorted(p.name for p in latest.iterdir()) == ["state.json", "tensors.safetensors"]
    state = json.loads((latest / "state.json").read_text())
    assert state["progress"]["step"] == 4 and state["progress"]["run"] == {"name": "r"}
    assert len(state["torch_rng"]) == 1 and len(state["torch_rng"][0]) == torch.get_rng_state().numel()
    assert state["scheduler"]["last_epoch"] == 4 and state["optimizer_param_groups"][0]["betas"] == [0.9, 0.999]
    tensors = load_file(latest / "tensors.safetensors")
    assert any(k.startswith("model.encoder.") for k in tensors)
    assert any(k.startswith("optimizer.") and k.endswith(".exp_avg_sq") for k in tensors)

    resumed = fit(*small_train, cfg, checkpoints=folder)  # from step 4: one more step
    straight = fit(*small_train, dataclasses.replace(cfg, checkpoint_every=None))
    assert resumed.resumed_from_step == 4 and straight.resumed_from_step is None
    a, b = resumed.model.state_dict(), straight.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.history == straight.history


def test_a_checkpoint_half_written_is_never_resumed_from(tmp_path):
    whole = tmp_path / "step-000000004"
    whole.mkdir()
    (whole / "state.json").write_text("{}")
    (tmp_path / ".step-000000006.tmp").mkdir()  # a kill during the write: renamed into place only when whole
    assert checkpoint.latest(tmp_path) == whole
    assert checkpoint.latest(tmp_path / "absent") is None


def test_the_checkpoint_folder_is_the_same_for_the_same_command_only(tiny_train_cfg):
    def key(**changes) -> str:
        cfg = dataclasses.replace(tiny_train_cfg, **changes)
        return run_key("digest", {"data": {"val_fraction": 0.1}, "train": dataclasses.asdict(cfg)})

    assert key() == key(checkpoint_every=7), "how often it is saved does not change what is trained"
    assert key() != key(seed=1) and key() != key(epochs=3)
    assert run_key("other", {"data": {"val_fraction": 0.1}, "train": dataclasses.asdict(tiny_train_cfg)}) != key()


def test_a_checkpoint_that_cannot_be_read_stops_the_run_with_its_name(tiny_train_cfg, small_train, tmp_path):
    broken = tmp_path / "checkpoints" / "step-000000004"
    broken.mkdir(parents=True)
    (broken / "state.json").write_text(json.dumps({"format": 1, "progress": {"step": 4}}))
    (broken / "tensors.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(FlywheelError, match=f"{broken}: cannot resume from this checkpoint .*delete"):
        fit(*small_train, tiny_train_cfg, checkpoints=broken.parent)
    (broken / "state.json").write_text(json.dumps({"format": 0}))
    with pytest.raises(FlywheelError, match="checkpoint format 0, expected 1"):
        checkpoint.read_progress(broken)
