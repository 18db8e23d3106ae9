"""Cross-process gathering for losses that use the whole global batch.

When ``torch.distributed`` is initialised, ``gather`` concatenates every process's tensor along
dim 0 and keeps the gradient for the local slice only (each process back-propagates through its
own samples, as in SimCLR/MoCo v3/Barlow Twins/VICReg/DINO reference code); otherwise it is
the identity, so single-process training needs nothing special.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def gather(x: torch.Tensor) -> torch.Tensor:
    """[B, ...] on each of W processes -> [W * B, ...]; gradient flows to the local part only."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x  # the local slice keeps its autograd history
    return torch.cat(parts)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over processes (no gradient); the identity in a single process."""
    if not is_distributed():
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / dist.get_world_size()
