"""Models Genesis corruptions: non-linear intensity, local pixel shuffling, and their composition.

Zhou et al., "Models Genesis", MICCAI 2019 / MedIA 2021 (Sec. 2.1, Fig. 2); defaults and size
laws follow the authors' ``utils.py`` (probabilities 0.9 / 0.5 / 0.9, in-painting 20% of paints).
Rewritten batched in torch (the reference loops over samples in NumPy): every function takes
x: float [B, C, *S] in [0, 1], 2D or 3D, and returns a ``Corrupted`` whose target is x.
"""

from __future__ import annotations

import torch

from medssl.transforms.corruptions.base import Corrupted, coin, per_sample, randint, select, uniform
from medssl.transforms.corruptions.painting import paint


def _interp(v: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Row-wise ``np.interp``: v [B, N] through the curve (xs sorted [B, K], ys [B, K])."""
    idx = torch.searchsorted(xs, v.contiguous()).clamp(1, xs.shape[1] - 1)
    x0, x1 = xs.gather(1, idx - 1), xs.gather(1, idx)
    y0, y1 = ys.gather(1, idx - 1), ys.gather(1, idx)
    w = ((v - x0) / (x1 - x0).clamp(min=1e-12)).clamp(0, 1)
    return y0 + w * (y1 - y0)


def nonlinear_intensity(x: torch.Tensor, generator: torch.Generator, p: float = 0.9,
                        points: int = 1000) -> Corrupted:
    """Map intensities through a random cubic Bézier curve from (0, 0) to (1, 1).

    As in the reference, half of the curves are monotone (both coordinates sorted) and half
    pair sorted x with y in curve order, which inverts intensities. meta: ``applied`` [B].
    """
    b = x.shape[0]
    ctrl = uniform(generator, (b, 2, 2), x)  # the two inner control points (x, y)
    t = torch.linspace(0, 1, points, device=x.device)[None]  # [1, K]

    def bezier(p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
        return 3 * (1 - t) ** 2 * t * p1[:, None] + 3 * (1 - t) * t ** 2 * p2[:, None] + t ** 3

    xs = bezier(ctrl[:, 0, 0], ctrl[:, 1, 0]).sort(dim=1).values
    ys = bezier(ctrl[:, 0, 1], ctrl[:, 1, 1])
    invert = coin(generator, 0.5, b, x)[:, None]
    ys = torch.where(invert, ys.flip(1), ys.sort(dim=1).values)
    mapped = _interp(x.reshape(b, -1).float(), xs, ys).reshape(x.shape).to(x.dtype)
    applied = coin(generator, p, b, x)
    return Corrupted(select(applied, mapped, x), x, {"applied": applied})


def _shuffle_blocks(x: torch.Tensor, generator: torch.Generator, sides: list[int], offsets: list[int],
                    cell_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One round: tile x [B, C, *S] with blocks of ``sides`` from ``offsets`` and permute the pixels
    of each block with probability ``cell_p``. Returns (x, shuffled-block mask [B, 1, *S])."""
    b, c, *shape = x.shape
    d = len(shape)
    cells = [(n - o) // s for n, o, s in zip(shape, offsets, sides, strict=True)]
    region = torch.zeros(b, 1, *shape, dtype=torch.bool, device=x.device)
    if min(cells) == 0:
        return x, region
    where = (slice(None), slice(None), *(slice(o, o + k * s) for o, k, s in zip(offsets, cells, sides,
                                                                                   strict=True)))
    split = [v for k, s in zip(cells, sides, strict=True) for v in (k, s)]  # (cells_1, side_1, ...)
    to_blocks = [0, 1, *range(2, 2 + 2 * d, 2), *range(3, 3 + 2 * d, 2)]  # -> [B, C, *cells, *sides]
    back = [to_blocks.index(i) for i in range(len(to_blocks))]
    blocks = x[where].reshape(b, c, *split).permute(to_blocks).reshape(b, c, *cells, -1)
    order = uniform(generator, (b, 1, *cells, blocks.shape[-1]), x).argsort(dim=-1)
    chosen = uniform(generator, (b, 1, *cells, 1), x) < cell_p  # per sample and block
    blocks = torch.where(chosen, blocks.gather(-1, order.expand_as(blocks)), blocks)
    out = x.clone()
    out[where] = blocks.reshape(b, c, *cells, *sides).permute(back).reshape(x[where].shape)
    hit = chosen.expand(b, 1, *cells, blocks.shape[-1]).reshape(b, 1, *cells, *sides)
    region[where] = hit.permute(back).reshape(region[where].shape)
    return out, region


def local_pixel_shuffle(x: torch.Tensor, generator: torch.Generator, p: float = 0.5,
                        max_block_frac: float = 0.1, rounds: int = 3, cell_p: float = 0.5) -> Corrupted:
    """Shuffle the pixels inside many small blocks (textures change, global shape stays).

    The reference shuffles 10,000 random blocks one by one; batched here: each round tiles the
    image with blocks of a random side in [2, max(2, ``max_block_frac`` x side)] per axis at a
    random offset (both shared by the batch) and permutes the pixels of each block with
    probability ``cell_p`` (chosen per sample; channels move together). meta: ``applied`` [B],
    ``region`` [B, 1, *S] (the shuffled blocks).
    """
    out = x
    region = torch.zeros(x.shape[0], 1, *x.shape[2:], dtype=torch.bool, device=x.device)
    for _ in range(rounds):
        sides = [2 + int(randint(generator, max(1, round(n * max_block_frac) - 1), (1,), x))
                 for n in x.shape[2:]]
        offsets = [int(randint(generator, s, (1,), x)) for s in sides]
        out, hit = _shuffle_blocks(out, generator, sides, offsets, cell_p)
        region |= hit
    applied = coin(generator, p, x.shape[0], x)
    return Corrupted(select(applied, out, x), x, {"applied": applied,
                                                  "region": region & per_sample(applied, region)})


def models_genesis(x: torch.Tensor, generator: torch.Generator, nonlinear_p: float = 0.9,
                   shuffle_p: float = 0.5, paint_p: float = 0.9, inpaint_rate: float = 0.2) -> Corrupted:
    """The Models Genesis composition, in the reference order: shuffle -> non-linear -> paint.

    meta: ``shuffled``, ``nonlinear``, ``painted``, ``inpainted`` [B] bool.
    """
    shuffled = local_pixel_shuffle(x, generator, shuffle_p)
    mapped = nonlinear_intensity(shuffled.input, generator, nonlinear_p)
    painted = paint(mapped.input, generator, paint_p, inpaint_rate)
    meta = {"shuffled": shuffled.meta["applied"], "nonlinear": mapped.meta["applied"],
            "painted": painted.meta["applied"], "inpainted": painted.meta["inpainted"]}
    return Corrupted(painted.input, x, meta)
