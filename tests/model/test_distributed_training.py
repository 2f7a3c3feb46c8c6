"""`flywheel train` as two processes under torchrun (torch.distributed over gloo, real processes): the
same model as one process, written once; and a two-worker run killed mid-training resumes from rank
0's checkpoint to the very weights of an uninterrupted one.

The tiny BERT here has no dropout: with it, one process and two draw different masks (they lay
out the same examples differently), which is a different seed, not a different computation. Without
it, what data parallelism must guarantee is all that differs: the ranks' gradients summed by the
all-reduce against one process's gradient of the whole batch, equal up to float rounding.
docs/benchmarks.md has the real MiniLM, dropout and all.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from model.core.config import DataConfig, TrainConfig
from model.data.examples import load_split
from model.train.distributed import World
from model.train.steps import train_step
from tests.helpers.data import write_subset
from tests.helpers.registry import local_registry
from tests.helpers.tiny_bert import save_tiny_bert

FLYWHEEL = str(Path(sys.executable).with_name("flywheel"))
# tests/conftest.py's tiny_train_cfg but for the batch (the data fixture's); ONNX export is tested with the artifact
TRAIN_FLAGS = (
    "--epochs 2 --batch-size 13 --learning-rate 1e-3 --head-learning-rate 1e-2 --no-freeze-embeddings --no-export-onnx"
).split()


@pytest.fixture(scope="module")
def tiny_bert_without_dropout(tmp_path_factory) -> Path:
    """tests/conftest.py's tiny BERT with dropout off (module docstring)."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert-no-dropout"), dropout=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory, sample_df) -> Path:
    """Four intents and the out-of-scope rows: 157 training texts, 13 steps an epoch at batch 13, the
    last of one text, which leaves the second worker's share empty."""
    path = write_subset(sample_df, tmp_path_factory.mktemp("ddp-data") / "four.csv", n_intents=4)
    split = load_split(path, DataConfig())
    assert (split["split"] == "train").sum() % 13 == 1, "the sample data changed: pick another batch size"
    return path


def torchrun(work: Path, data: Path, base_model: Path, *extra: str, wait: bool = True):
    """``flywheel train`` as two worker processes on this machine (torchrun's standalone rendezvous picks
    a free port); waited for: (stdout, stderr), else the running torchrun. Output goes to files in
    ``work``'s parent, never to a pipe nobody reads while the test waits."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--no-python",
        FLYWHEEL, "train", "--data", str(data), "--base-model", str(base_model), "--work-dir", str(work),
        *TRAIN_FLAGS, *extra,
    ]  # fmt: skip
    # mlflow.set_tracking_uri, in an earlier test's training, exports MLFLOW_TRACKING_URI: this run's store
    # is the one in its work folder
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    out, err = (work.parent / f"{work.name}.{stream}" for stream in ("stdout", "stderr"))
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env)
    if not wait:
        return process
    process.wait(timeout=600)
    assert process.returncode == 0, err.read_text()[-3000:]
    return out.read_text(), err.read_text()


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants, as a node going away would: torchrun starts each
    worker in a session of its own, so killing its process group would leave the workers running."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        found.append(parent)
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                todo += [int(child) for child in (task / "children").read_text().split()]
            except FileNotFoundError:  # a thread that has just ended
                pass
    for victim in reversed(found):  # the workers first: the agent, once dead, cannot clean up after them
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory, data, tiny_bert_without_dropout) -> dict:
    """One uninterrupted run of two workers: its work folder and the JSON rank 0 printed."""
    work = tmp_path_factory.mktemp("two-workers")
    out, _ = torchrun(work, data, tiny_bert_without_dropout, "--checkpoint-every", "10")
    return {"work": work, "summary": json.loads(out)}  # one JSON document: the workers print nothing


def runs_in_store(work: Path) -> list:
    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments)


def test_each_worker_takes_every_other_example_and_a_worker_left_none_weighs_nothing():
    def shares(batch: list[int]) -> list[tuple[list[int], float]]:
        return [(mine.tolist(), weight) for mine, weight in (World(r, 2).shard(np.array(batch)) for r in (0, 1))]

    assert shares([5, 8, 13]) == [([5, 13], 1.0), ([8], 1.0)]
    assert shares([5]) == [([5], 1.0), ([5], 0.0)]  # the second worker runs the text, at weight 0


@pytest.mark.slow  # two runs of two worker processes each, one of one
def test_two_workers_train_the_model_one_process_trains(two_workers, data, tiny_bert_without_dropout, tmp_path):
    cfg = TrainConfig(
        base_model=str(tiny_bert_without_dropout),
        epochs=2,
        batch_size=13,  # the effective batch: two workers take 7 and 6, and of the last batch 1 and 0
        learning_rate=1e-3,
        head_learning_rate=1e-2,
        freeze_embeddings=False,
        export_onnx=False,
    )
    work = tmp_path / "work"
    one, _ = train_step(data, DataConfig(), cfg, local_registry(work), work)
    two = two_workers["summary"]
    assert (one.workers, two["workers"]) == (1, 2)
    assert abs(two["metrics"]["accuracy"] - one.metrics["accuracy"]) <= 0.01
    history = [json.loads((Path(s) / "meta.json").read_text())["history"] for s in (one.artifact, two["artifact"])]
    assert [r["steps"] for r in history[0]] == [r["steps"] for r in history[1]], "the same optimiser steps"
    for a, b in zip(*history):  # the same losses, up to float rounding (different sums of the same terms)
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)


@pytest.mark.slow
def test_only_rank_0_writes_the_artifact_the_run_and_the_report(two_workers):
    work, summary = two_workers["work"], two_workers["summary"]
    assert [p.name for p in (work / "models").iterdir()] == [Path(summary["artifact"]).name]
    runs = runs_in_store(work)
    assert [r.info.run_id for r in runs] == [summary["mlflow_run_id"]] and runs[0].info.status == "FINISHED"
    assert json.loads((work / "reports" / "train.json").read_text())["artifact"] == summary["artifact"]
    assert not any((work / "checkpoints").iterdir()), "a finished run leaves no checkpoint"


@pytest.mark.slow
def test_two_workers_killed_mid_training_resume_to_the_same_weights(
    two_workers, data, tiny_bert_without_dropout, tmp_path
):
    work = tmp_path / "work"
    killed = torchrun(work, data, tiny_bert_without_dropout, "--checkpoint-every", "3", wait=False)
    checkpoints = work / "checkpoints"
    try:
        while not any(checkpoints.glob("*/step-*")) and killed.poll() is None:
            time.sleep(0.05)
    finally:
        kill_tree(killed.pid)  # torchrun's agent and both workers
        killed.wait()
    assert killed.returncode == -signal.SIGKILL, "killed, not finished"
    assert not (work / "models").exists()

    out, _ = torchrun(work, data, tiny_bert_without_dropout, "--checkpoint-every", "3")
    resumed = json.loads(out)
    assert resumed["resumed_from_step"] >= 3 and resumed["resumed_from_step"] % 3 == 0
    uninterrupted = load_file(Path(two_workers["summary"]["artifact"]) / "model.safetensors")
    weights = load_file(Path(resumed["artifact"]) / "model.safetensors")
    assert weights.keys() == uninterrupted.keys()
    assert all(torch.equal(weights[k], uninterrupted[k]) for k in weights), "bit for bit"
    assert resumed["metrics"]["accuracy"] == two_workers["summary"]["metrics"]["accuracy"]
    runs = runs_in_store(work)  # the killed run's MLflow run, continued and finished
    assert [(r.info.run_id, r.info.status) for r in runs] == [(resumed["mlflow_run_id"], "FINISHED")]
