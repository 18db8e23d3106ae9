"""torchrun / DDP: the process group from the environment, ranks, and the DDP wrapper.

``torchrun --nproc-per-node N -m medssl ...`` sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` and the
rendezvous variables; :func:`init_from_env` starts the group (NCCL on CUDA, gloo on the CPU) and
pins each process to GPU ``LOCAL_RANK``. Conventions (as in MAE, DINO and MONAI's recipes):

- ``batch_size`` in a config is the *global* batch: each of W ranks trains on ``batch_size / W``
  samples of the same seeded permutation (``medssl.data.loaders``), so a recipe means the same
  thing on 1 and on 8 GPUs, and W processes take the same optimisation steps as one.
- Rank 0 alone writes logs, checkpoints, results and reports, and prints progress.
- Model initialisation is identical on every rank (same seed; DDP also broadcasts rank 0's weights);
  random augmentations differ per rank (seeded ``seed + rank`` when training starts).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from medssl.errors import MedsslError
from medssl.losses.distributed import is_distributed, local_only, rank, world_size

__all__ = ["barrier", "collective_device", "init_from_env", "is_distributed", "is_main", "local_only",
           "local_rank", "on_main", "rank", "rank_max", "shutdown", "sync_batchnorm", "wait_for_all",
           "world_size", "wrap_ddp"]

T = TypeVar("T")


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def init_from_env(device: str = "auto", timeout_minutes: float = 30) -> bool:
    """Start the process group when launched by ``torchrun`` with more than one process.

    ``device``: ``engine.device``. NCCL when it resolves to CUDA, else gloo. Returns True when a
    group was started (or already exists).
    """
    if not launched_by_torchrun():
        return False
    if dist.is_initialized():
        return True
    cuda = device != "cpu" and not device.startswith("mps") and torch.cuda.is_available()
    if cuda:
        if local_rank() >= torch.cuda.device_count():
            raise MedsslError(f"LOCAL_RANK={local_rank()} but only {torch.cuda.device_count()} GPU(s) are "
                              "visible; use --nproc-per-node <= the GPU count")
        torch.cuda.set_device(local_rank())
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=timeout_minutes))
    return True


def shutdown() -> None:
    """End the process group (at exit of a ``torchrun`` command)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_main() -> bool:
    """Whether this process writes files and prints (rank 0, or the only process)."""
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


WAIT_TIMEOUT = timedelta(days=7)  # wait_for_all: a longest cell, not a hang
_waits: dict[str, Any] = {}  # wait_for_all's gloo group, made on its first call in a process group


def wait_for_all() -> None:
    """A barrier for ranks that wait on other ranks' work of unknown length (a study's cells, dealt
    round-robin): on a gloo group of its own with :data:`WAIT_TIMEOUT`, since the main group's
    timeout (30 min) is sized to find a hung collective inside a training step, and a rank that
    finishes its cells early would hit it while a long 100%-label cell runs elsewhere."""
    if not is_distributed():
        return
    if _waits.get("world") is not dist.group.WORLD:  # every rank makes it together (new_group is collective)
        _waits.update(world=dist.group.WORLD, group=dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT))
    dist.barrier(group=_waits["group"])


def rank_max(value: float) -> float:
    """The largest ``value`` over the processes (the identity in one process): budgets and early
    stopping decide together. NCCL has no CPU collectives, so the number travels on this rank's GPU."""
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def collective_device() -> torch.device:
    """Where a tensor made for a collective must live: this rank's CUDA device under NCCL, else CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm layers -> ``SyncBatchNorm`` (statistics over the global batch). CUDA only: torch's
    SyncBatchNorm has no CPU kernel."""
    if not is_distributed():
        return model
    if device.type != "cuda":
        raise MedsslError("engine.sync_batchnorm needs CUDA (torch's SyncBatchNorm has no CPU kernel); "
                          "set it to false on the CPU")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel`` around ``model`` (a ``TrainStep``) on this rank's device."""
    ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only (file-system work: run directories, split files) and give its result
    to every rank; an error there is raised on every rank, so no rank waits forever for another."""
    if not is_distributed():
        return fn()
    box: list[Any] = [None, None]
    if is_main():
        try:
            box[0] = fn()
        except MedsslError as err:
            box[1] = str(err)
    dist.broadcast_object_list(box, src=0)
    if box[1] is not None:
        raise MedsslError(box[1])
    return box[0]
