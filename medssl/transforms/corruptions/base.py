"""The corruption contract and the small random helpers every corruption shares.

A corruption is a pure function ``(x, generator, **params) -> Corrupted`` on a batch
x: float [B, C, *S] in [0, 1] (S = (H, W) or (D, H, W), the same code for both). All randomness
comes from the explicit ``torch.Generator`` (drawn on the generator's device, then moved to x's),
so the same generator state gives the same output on CPU.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Corrupted(NamedTuple):
    """What a corruption returns.

    Attributes:
        input: [B, C, *S] the corrupted network input, same range as x.
        target: [B, C, *S] what a restorative model should output (the original x).
        meta: per-sample metadata, e.g. ``applied`` [B] bool (was the sample corrupted) or
            ``region`` [B, 1, *S] bool (where it was changed).
    """

    input: torch.Tensor
    target: torch.Tensor
    meta: dict[str, torch.Tensor]


def uniform(generator: torch.Generator, shape: tuple[int, ...], like: torch.Tensor,
            lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """U[lo, hi) samples of ``shape`` from ``generator``, on ``like``'s device in fp32."""
    u = torch.rand(shape, generator=generator, device=generator.device)
    return (lo + (hi - lo) * u).to(like.device)


def randint(generator: torch.Generator, high: torch.Tensor | int, shape: tuple[int, ...],
            like: torch.Tensor) -> torch.Tensor:
    """Integers in [0, high) (``high`` broadcastable to ``shape``, each entry >= 1), as int64."""
    high = torch.as_tensor(high, device=like.device)
    return (uniform(generator, shape, like) * high).long().clamp(max=high - 1)


def coin(generator: torch.Generator, p: float, batch: int, like: torch.Tensor) -> torch.Tensor:
    """[B] bool, True with probability ``p`` per sample."""
    return uniform(generator, (batch,), like) < p


def per_sample(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a [B] tensor to [B, 1, 1, ...] to broadcast over x."""
    return mask.reshape(-1, *([1] * (x.dim() - 1)))


def select(applied: torch.Tensor, corrupted: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The corrupted sample where ``applied`` [B] is True, the original elsewhere."""
    return torch.where(per_sample(applied, x), corrupted, x)


def box_mask(lo: torch.Tensor, size: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Union of axis-aligned boxes as a [B, 1, *shape] bool mask.

    Args:
        lo: [B, K, d] first index of each of K boxes per sample along each of d spatial axes.
        size: [B, K, d] box side lengths (0 gives an empty box).
        shape: the d spatial sizes.
    """
    inside = None
    for axis, n in enumerate(shape):
        coord = torch.arange(n, device=lo.device)  # [n]
        view = [1] * len(shape)
        view[axis] = n
        a = lo[..., axis, None] <= coord
        b = coord < (lo[..., axis] + size[..., axis])[..., None]
        along = (a & b).reshape(*lo.shape[:2], *view)  # [B, K, 1.., n, ..1]
        inside = along if inside is None else inside & along
    return inside.any(dim=1, keepdim=True)


def random_boxes(generator: torch.Generator, x: torch.Tensor, count: int, min_frac: float,
                 max_frac: float, margin: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """K=``count`` random boxes per sample with sides in [min_frac, max_frac] x the image side.

    Boxes lie inside the image, at least ``margin`` voxels from its border when it fits.
    Returns (lo, size), both [B, K, d] int64.
    """
    shape = torch.tensor(x.shape[2:], device=x.device)
    b, d = x.shape[0], len(x.shape) - 2
    lo_side = (shape * min_frac).floor().clamp(min=1)
    hi_side = (shape * max_frac).floor().clamp(min=lo_side)
    size = lo_side + randint(generator, hi_side - lo_side + 1, (b, count, d), x)
    margin_t = torch.full_like(size, margin).minimum((shape - size) // 2)
    room = (shape - size - 2 * margin_t + 1).clamp(min=1)
    lo = margin_t + randint(generator, room, (b, count, d), x)
    return lo, size
