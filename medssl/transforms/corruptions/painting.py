"""Models Genesis in-painting and out-painting (Zhou et al., MICCAI 2019 / MedIA 2021, Sec. 2.1).

Box sizes and counts follow the authors' ``utils.py``: in-painting fills up to 5 boxes of 1/6-1/3
of each side with uniform noise, out-painting keeps up to 5 boxes of 3/7-4/7 of each side and
fills the rest; each further box exists with probability 0.95. x: [B, C, *S] in [0, 1], 2D or 3D.
"""

from __future__ import annotations

import torch

from medssl.transforms.corruptions.base import (
    Corrupted,
    box_mask,
    coin,
    per_sample,
    random_boxes,
    select,
    uniform,
)


def _more_boxes(generator: torch.Generator, x: torch.Tensor, count: int, keep_p: float) -> torch.Tensor:
    """[B, K, 1] 0/1: box k exists if k == 0 or k further coins with ``keep_p`` all came up."""
    coins = (uniform(generator, (x.shape[0], count, 1), x) < keep_p).long()
    coins[:, 0] = 1
    return coins.cumprod(dim=1)


def inpaint(x: torch.Tensor, generator: torch.Generator, max_holes: int = 5, keep_p: float = 0.95,
            size: tuple[float, float] = (1 / 6, 1 / 3), margin: int = 3) -> Corrupted:
    """Fill 1 to ``max_holes`` boxes (sides ``size`` x the image side) with uniform noise.

    The reference may draw zero holes (5%); here a painted sample has at least one.
    meta: ``region`` [B, 1, *S] (the noise-filled voxels, the only ones that change).
    """
    lo, side = random_boxes(generator, x, max_holes, *size, margin)
    region = box_mask(lo, side * _more_boxes(generator, x, max_holes, keep_p), x.shape[2:])
    noise = uniform(generator, tuple(x.shape), x).to(x.dtype)
    return Corrupted(torch.where(region, noise, x), x, {"region": region})


def outpaint(x: torch.Tensor, generator: torch.Generator, max_boxes: int = 5, keep_p: float = 0.95,
             size: tuple[float, float] = (3 / 7, 4 / 7), margin: int = 3) -> Corrupted:
    """Replace everything outside 1 to ``max_boxes`` kept boxes with uniform noise.

    meta: ``region`` [B, 1, *S] (the noise-filled voxels outside the kept boxes).
    """
    lo, side = random_boxes(generator, x, max_boxes, *size, margin)
    keep = box_mask(lo, side * _more_boxes(generator, x, max_boxes, keep_p), x.shape[2:])
    noise = uniform(generator, tuple(x.shape), x).to(x.dtype)
    return Corrupted(torch.where(keep, x, noise), x, {"region": ~keep})


def paint(x: torch.Tensor, generator: torch.Generator, p: float = 0.9,
          inpaint_rate: float = 0.2) -> Corrupted:
    """In-painting (probability ``inpaint_rate``) or out-painting on a fraction ``p`` of samples.

    meta: ``applied`` [B], ``inpainted`` [B], ``region`` [B, 1, *S].
    """
    b = x.shape[0]
    inner, outer = inpaint(x, generator), outpaint(x, generator)
    applied, inpainted = coin(generator, p, b, x), coin(generator, inpaint_rate, b, x)
    painted = select(inpainted, inner.input, outer.input)
    region = torch.where(per_sample(inpainted, inner.meta["region"]), inner.meta["region"],
                         outer.meta["region"])
    return Corrupted(select(applied, painted, x), x, {
        "applied": applied, "inpainted": inpainted & applied,
        "region": region & per_sample(applied, region)})
