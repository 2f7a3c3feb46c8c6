"""One training process, or one of N under ``torchrun``: torch.distributed's process group, read from
the environment torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``).

Without ``WORLD_SIZE`` (or with 1) nothing is started and ``World`` says "rank 0 of 1": the code
path is the same, every collective a no-op. Under torchrun each rank trains through PyTorch's
``DistributedDataParallel`` (gradients averaged over the ranks by its all-reduce), over NCCL on
CUDA, each rank on the GPU ``LOCAL_RANK`` names, and over gloo on the CPU. A second, gloo group
carries what the CPU holds (per-epoch loss sums, RNG states for a checkpoint) and the final
barrier: a barrier on it waits on a socket, not on a spinning GPU stream.

``shard`` splits one batch between the ranks: every rank takes the same number of steps, and
together the ranks' shards are the one-process run's batch (``model.train.fit``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from model.artifact.network import pick_device
from model.core.errors import FlywheelError

# Rank 0 evaluates, exports ONNX and packages while the others wait at the final barrier; on a CPU
# that takes minutes on Banking77, well past the 10-minute default of an NCCL group.
GROUP_TIMEOUT = timedelta(hours=1)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")
    cpu_group: object = None  # the gloo group for CPU tensors and the barrier; None in one process

    @property
    def is_main(self) -> bool:
        """Rank 0 writes: checkpoints, the artifact, the ONNX export, the MLflow run, the reports."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def shard(self, batch: np.ndarray) -> tuple[np.ndarray, float]:
        """This rank's examples of ``batch`` (every ``size``-th, so each rank gets texts of every
        length in a length-sorted batch) and the weight its loss carries.

        A batch with fewer examples than ranks (the last of a chunk can be) leaves some rank
        nothing; that rank runs the batch's first example at weight 0, so it still takes part in
        the step's gradient all-reduce and contributes nothing to it."""
        mine = batch[self.rank :: self.size]
        if len(mine):
            return mine, 1.0
        return batch[:1], 0.0

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over the ranks (float64, on the CPU)."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(tensor, group=self.cpu_group)
        return tensor.tolist()

    def gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's ``tensor`` (a CPU tensor of the same shape on each rank), in rank order."""
        if not self.distributed:
            return [tensor]
        out = [torch.empty_like(tensor) for _ in range(self.size)]
        dist.all_gather(out, tensor.contiguous(), group=self.cpu_group)
        return out

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` under PyTorch's DistributedDataParallel (``model`` itself in one process): its
        backward all-reduces the gradients. Parameters the forward pass leaves unused (BERT's pooler)
        are looked for each step; the buffers are constants, broadcast once, here."""
        if not self.distributed:
            return model
        return DistributedDataParallel(
            model,
            device_ids=[self.device] if self.device.type == "cuda" else None,
            find_unused_parameters=True,
            forward_sync_buffers=False,
        )

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier(group=self.cpu_group)


def join(device_name: str) -> World:
    """The world this process belongs to: started from torchrun's environment, or one process alone.

    ``device_name`` is ``train.device``: on CUDA each rank takes the GPU ``LOCAL_RANK`` names."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(device_name)
    if size <= 1:
        return World(device=device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise FlywheelError(
                f"LOCAL_RANK {local_rank} but {torch.cuda.device_count()} GPU(s): start at most one worker per GPU "
                "(torchrun --nproc-per-node)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        cuda = device.type == "cuda"  # RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT come from the environment
        dist.init_process_group("nccl" if cuda else "gloo", timeout=GROUP_TIMEOUT, device_id=device if cuda else None)
    cpu_group = dist.new_group(backend="gloo", timeout=GROUP_TIMEOUT) if device.type == "cuda" else dist.group.WORLD
    return World(rank=dist.get_rank(), size=dist.get_world_size(), device=device, cpu_group=cpu_group)


def leave(world: World) -> None:
    """End the process group (a no-op for one process)."""
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
