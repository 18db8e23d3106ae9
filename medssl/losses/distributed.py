"""Cross-process gathering for losses that use the whole global batch.

When ``torch.distributed`` is initialised (``torchrun``), ``gather`` concatenates every process's
tensor along dim 0 *with* gradient: its backward sends each process the sum of the gradients that
every process's loss put on its slice (``torch.distributed.nn.functional.all_gather``). A loss
computed on the gathered batch is then differentiated exactly: after DDP averages the parameter
gradients over the W processes, they equal the single-process gradient of the same global batch
(tested with two gloo processes in ``tests/test_distributed.py``). The MoCo v3/SimCLR reference
code keeps the gradient of the local slice only, which drops the terms where a sample is another
process's negative. Outside ``torchrun`` (or inside :func:`local_only`) everything is the identity.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn

_local = False  # set by ``local_only``: this process trains alone although a group exists


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process (and not ``local_only``)."""
    return not _local and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


@contextmanager
def local_only() -> Iterator[None]:
    """Train in this process alone (a study cell on one rank): no gathering, no DDP wrapper."""
    global _local
    before, _local = _local, True
    try:
        yield
    finally:
        _local = before


def gather(x: torch.Tensor) -> torch.Tensor:
    """[B, ...] on each of W processes -> [W * B, ...] in rank order, differentiable."""
    if not is_distributed():
        return x
    if not x.requires_grad:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)
    return torch.cat(dist_fn.all_gather(x.contiguous()))


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over processes (no gradient); the identity in a single process."""
    if not is_distributed():
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / dist.get_world_size()
