"""Context restoration corruption: swap pairs of random patches.

Chen et al., "Self-supervised learning for medical image analysis using image context
restoration", MedIA 2019 (Sec. 3.1): T times, pick two non-overlapping patches and swap them;
intensities are only moved, so the histogram is unchanged and only the spatial context is broken.
"""

from __future__ import annotations

import math

import torch

from medssl.transforms.corruptions.base import Corrupted, randint


def _patch_offsets(shape: tuple[int, ...], side: list[int], device: torch.device) -> torch.Tensor:
    """Flat offsets [P] of a patch of ``side`` inside a row-major array of ``shape``."""
    strides = [math.prod(shape[i + 1:]) for i in range(len(shape))]
    offsets = torch.zeros((), dtype=torch.long, device=device)
    for s, stride in zip(side, strides, strict=True):
        offsets = offsets[..., None] + torch.arange(s, device=device) * stride
    return offsets.reshape(-1)


def context_swap(x: torch.Tensor, generator: torch.Generator, num_swaps: int = 10,
                 patch_frac: float = 0.15) -> Corrupted:
    """Swap ``num_swaps`` pairs of patches (side ``patch_frac`` x image side) per sample.

    Args:
        x: [B, C, *S] in [0, 1].
        generator: the source of randomness.
        num_swaps: T, swaps per sample; a drawn pair that overlaps is skipped (no rejection loop,
            so the count is an upper bound).
        patch_frac: patch side as a fraction of each image side (at least 1 voxel).

    Returns:
        ``Corrupted`` with meta ``region`` [B, 1, *S] (voxels moved by some swap).
    """
    b, c, *shape = x.shape
    side = [max(1, round(n * patch_frac)) for n in shape]
    strides = torch.tensor([math.prod(shape[i + 1:]) for i in range(len(shape))], device=x.device)
    room = torch.tensor([n - s + 1 for n, s in zip(shape, side, strict=True)], device=x.device)
    offsets = _patch_offsets(tuple(shape), side, x.device)[None]  # [1, P]
    size = torch.tensor(side, device=x.device)
    out = x.reshape(b, c, -1).clone()
    region = torch.zeros(b, out.shape[-1], dtype=torch.bool, device=x.device)
    for _ in range(num_swaps):
        lo_a, lo_b = (randint(generator, room, (b, len(shape)), x) for _ in range(2))
        overlap = ((lo_a - lo_b).abs() < size).all(dim=1)
        idx_a = (lo_a * strides).sum(1, keepdim=True) + offsets  # [B, P]
        idx_b = torch.where(overlap[:, None], idx_a, (lo_b * strides).sum(1, keepdim=True) + offsets)
        ia, ib = idx_a[:, None].expand(b, c, -1), idx_b[:, None].expand(b, c, -1)
        va, vb = out.gather(2, ia), out.gather(2, ib)
        out = out.scatter(2, ia, vb).scatter(2, ib, va)
        moved = ~overlap[:, None].expand_as(idx_a)
        for idx in (idx_a, idx_b):
            region = region.scatter(1, idx, region.gather(1, idx) | moved)
    region = region.reshape(b, 1, *shape)
    return Corrupted(out.reshape(x.shape), x, {"region": region})
