"""Training checkpoints: what a run killed mid-epoch (a preempted spot node) needs to go on as if it
never stopped.

A checkpoint is a folder ``step-<N>`` in the run's checkpoint folder holding

- ``tensors.safetensors``: the model's state (``model.*``) and the optimizer's per-parameter state
  (``optimizer.<param>.<name>``: AdamW's moments and step counts);
- ``state.json``: everything else, as JSON: the optimizer's parameter groups (learning rates,
  betas, decay), the LR scheduler's and the loss scaler's state, the step, the epoch, this epoch's
  batch order and how many of its batches are done, the history so far, and the random number
  generators: numpy's (batch order), Python's, and every rank's torch CPU (and CUDA) generator
  (dropout), each as plain numbers.

Never pickle (``torch.save`` is pickle): both files are data only. The folder is written beside its
final name and renamed into place (``model.core.files.replacing``), so a kill mid-write leaves the
previous checkpoint, never half of one; once the new one is in place the older ones are removed.

Restoring all of that makes a resumed run on the CPU repeat the uninterrupted one bit for bit.
Under DDP rank 0 writes (every rank's model and optimizer are the same after each step) and every
rank resumes from it; with as many ranks as wrote it, each rank gets its own generator back.
"""

from __future__ import annotations

import json
import random
import shutil
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from model.core.errors import FlywheelError
from model.core.files import replacing
from model.train.distributed import World

FORMAT = 1
TENSORS, STATE = "tensors.safetensors", "state.json"
PREFIX = "step-"


@dataclass
class Progress:
    """Where a run is: the loop's own state, saved as JSON in every checkpoint."""

    step: int = 0  # optimiser steps done
    epoch: int = 0  # the epoch under way (0-based)
    batches: list[list[int]] | None = None  # this epoch's batches (example indices); None: not drawn yet
    batches_done: int = 0  # of this epoch's batches
    running_loss: float = 0.0  # this epoch's loss so far, summed over steps (and ranks)
    history: list[dict] = field(default_factory=list)  # one record per finished epoch
    run: dict = field(default_factory=dict)  # the caller's: which MLflow run and artifact name this is

    def next_epoch(self) -> Progress:
        return replace(self, epoch=self.epoch + 1, batches=None, batches_done=0, running_loss=0.0)


def latest(folder: Path | None) -> Path | None:
    """The newest whole checkpoint in ``folder`` (a kill mid-write leaves only a hidden temporary)."""
    if folder is None or not folder.is_dir():
        return None
    found = sorted(p for p in folder.iterdir() if p.name.startswith(PREFIX) and (p / STATE).is_file())
    return found[-1] if found else None


def read_progress(path: Path) -> Progress:
    """Where the run of checkpoint ``path`` was (and which run it was: ``Progress.run``)."""
    with _readable(path):
        return Progress(**_state(path)["progress"])


def _state(path: Path) -> dict:
    state = json.loads((path / STATE).read_text())
    if state.get("format") != FORMAT:
        raise FlywheelError(f"checkpoint format {state.get('format')}, expected {FORMAT}")
    return state


@contextmanager
def _readable(path: Path):
    """A checkpoint that cannot be read, or does not fit the model, stops the run with its name."""
    try:
        yield
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError, FlywheelError) as exc:
        raise FlywheelError(
            f"{path}: cannot resume from this checkpoint ({exc}); delete {path.parent} to train from the start"
        ) from exc


def save(
    folder: Path,
    world: World,
    progress: Progress,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    scaler: torch.amp.GradScaler,
    rng: np.random.Generator,
) -> None:
    """Write the checkpoint of ``progress.step`` (rank 0), then drop the older ones. Every rank calls it:
    rank 0 gathers the other ranks' generators and losses."""
    progress = replace(progress, running_loss=world.sum([progress.running_loss])[0])
    device = next(model.parameters()).device
    torch_rng = [t.tolist() for t in world.gather(torch.get_rng_state())]
    cuda_rng = [t.tolist() for t in world.gather(torch.cuda.get_rng_state(device))] if device.type == "cuda" else None
    if not world.is_main:
        return
    optimizer_state = optimizer.state_dict()
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    for index, values in optimizer_state["state"].items():
        tensors.update({f"optimizer.{index}.{name}": v for name, v in values.items()})
    state = {
        "format": FORMAT,
        "progress": asdict(progress),
        "world_size": world.size,
        "optimizer_param_groups": optimizer_state["param_groups"],
        "scheduler": scheduler.state_dict(),  # LambdaLR: counters and rates; its lambdas come from the config
        "grad_scaler": scaler.state_dict(),
        "numpy_rng": rng.bit_generator.state,
        "python_rng": random.getstate(),
        "torch_rng": torch_rng,
        "cuda_rng": cuda_rng,
    }
    target = folder / f"{PREFIX}{progress.step:09d}"
    with replacing(target) as staging:
        staging.mkdir()
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, staging / TENSORS)
        (staging / STATE).write_text(json.dumps(state) + "\n")
    for older in folder.iterdir():
        if older.name.startswith(PREFIX) and older.name < target.name:
            shutil.rmtree(older, ignore_errors=True)


def restore(
    path: Path,
    world: World,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    scaler: torch.amp.GradScaler,
    rng: np.random.Generator,
    seed: int,
) -> Progress:
    """Load checkpoint ``path`` into the model, optimizer, scheduler, scaler and generators; return where
    the run was."""
    with _readable(path):
        state = _state(path)
        progress = Progress(**state["progress"])
        tensors = load_file(path / TENSORS)
        model.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")})
        per_param: dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer."):
                _, index, name = key.split(".", 2)
                per_param.setdefault(int(index), {})[name] = value
        groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in state["optimizer_param_groups"]]
        optimizer.load_state_dict({"state": per_param, "param_groups": groups})
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["grad_scaler"])
        rng.bit_generator.state = state["numpy_rng"]
        version, internal, gauss = state["python_rng"]
        random.setstate((version, tuple(internal), gauss))
        device = next(model.parameters()).device
        if state["world_size"] == world.size:
            torch.set_rng_state(torch.tensor(state["torch_rng"][world.rank], dtype=torch.uint8))
            if device.type == "cuda" and state["cuda_rng"]:
                torch.cuda.set_rng_state(torch.tensor(state["cuda_rng"][world.rank], dtype=torch.uint8), device)
        else:  # another number of ranks: every rank's dropout stream starts afresh, still from the seed
            torch.manual_seed(int(np.random.SeedSequence([seed, progress.step, world.rank]).generate_state(1)[0]))
    if not world.is_main:  # the loss so far is summed over the ranks once, on rank 0
        progress.running_loss = 0.0
    return progress


def remove(folder: Path | None) -> None:
    """The run's checkpoints, once its artifact is written: a rerun of the same command trains afresh."""
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
