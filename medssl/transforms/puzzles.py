"""Geometry for predictive pretext tasks: rotation classes, tile grids, permutation sets.

Batched, 2D and 3D ([B, C, H, W] and [B, C, D, H, W]), random choices from explicit generators.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from medssl.errors import MedsslError
from medssl.transforms.corruptions.base import randint

# 3D rotation classes: identity + 90/180/270 degrees about each of the three axes (10 classes,
# as in Taleb et al. 2020's 3D rotation task), rather than the 24-element cube group, whose
# compound rotations are hard to tell apart on roughly symmetric anatomy. Planes are (dim, dim).
_PLANES_3D = ((3, 4), (2, 4), (2, 3))  # rotations about the D, H and W axes


def num_rotations(spatial_dims: int) -> int:
    """4 in 2D (0/90/180/270 degrees), 10 in 3D."""
    return 4 if spatial_dims == 2 else 1 + 3 * len(_PLANES_3D)


def _rotate_one(x: torch.Tensor, label: int) -> torch.Tensor:
    if x.dim() == 4:
        return torch.rot90(x, label, dims=(2, 3))
    if label == 0:
        return x
    axis, k = divmod(label - 1, 3)
    return torch.rot90(x, k + 1, dims=_PLANES_3D[axis])


def rotate(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Rotate each sample by its class ``labels`` [B] (see ``num_rotations``); needs square/cubic x."""
    if len(set(x.shape[2:])) > 1:
        raise MedsslError(f"rotation prediction needs square/cubic images, got {tuple(x.shape[2:])}")
    out = torch.empty_like(x)
    for label in labels.unique().tolist():
        sel = labels == label
        out[sel] = _rotate_one(x[sel], label)
    return out


def half_turn(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """180-degree rotations: class 0 identity, class 1 + a about axis a (2 classes in 2D, 4 in 3D).

    A 180-degree turn about an axis flips the other two; these form a group (Klein four-group in 3D).
    """
    out = torch.empty_like(x)
    spatial = list(range(2, x.dim()))
    for label in labels.unique().tolist():
        sel = labels == label
        if label == 0:
            out[sel] = x[sel]
        else:  # in 2D the only half turn flips both axes
            out[sel] = x[sel].flip([d for d in spatial if len(spatial) == 2 or d != spatial[label - 1]])
    return out


def num_half_turns(spatial_dims: int) -> int:
    return 2 if spatial_dims == 2 else 4


def grid_tiles(x: torch.Tensor, grid: int, crop_frac: float, generator: torch.Generator) -> torch.Tensor:
    """Cut x into grid^d cells and take a random crop of ``crop_frac`` x cell side from each.

    The random crop inside each cell leaves gaps and jitter between tiles, so edges do not give
    the arrangement away (Doersch et al. 2015, Noroozi & Favaro 2016).
    x: [B, C, *S] -> [B, T, C, *tile], T = grid^d tiles in row-major grid order.
    """
    b, _, *shape = x.shape
    d = len(shape)
    cell = [n // grid for n in shape]
    tile = [max(1, round(s * crop_frac)) for s in cell]
    cells = torch.tensor(list(itertools.product(range(grid), repeat=d)), device=x.device)  # [T, d]
    t = len(cells)
    index = [torch.arange(b, device=x.device).reshape(b, 1, *([1] * d))]
    for axis in range(d):
        off = randint(generator, cell[axis] - tile[axis] + 1, (b, t), x)
        start = cells[:, axis] * cell[axis] + off  # [B, T]
        view = [1] * d
        view[axis] = tile[axis]
        steps = torch.arange(tile[axis], device=x.device).reshape(view)
        index.append(start.reshape(b, t, *([1] * d)) + steps)
    return x.movedim(1, -1)[tuple(index)].movedim(-1, 2)  # [B, T, *tile, C] -> [B, T, C, *tile]


def hamming_permutations(n: int, count: int, seed: int = 0) -> torch.Tensor:
    """A fixed set of ``count`` permutations of ``n`` items, greedily maximising the minimum
    pairwise Hamming distance (Noroozi & Favaro 2016, Alg. 1, with max-min instead of max-mean).

    Candidates are all n! permutations (n <= 9); ties break by a seeded shuffle. Returns
    LongTensor [min(count, n!), n]; row 0 is a random permutation (not necessarily identity).
    """
    if n > 9:
        raise ValueError(f"hamming_permutations enumerates n! candidates; n={n} is too many")
    # NumPy, not torch: this row-wise compare over n! candidates is ~30x faster in NumPy on CPU
    rng = np.random.default_rng(seed)
    candidates = np.array(list(itertools.permutations(range(n))), dtype=np.int8)
    candidates = candidates[rng.permutation(len(candidates))]
    count = min(count, math.factorial(n))
    chosen = [0]
    min_dist = (candidates != candidates[0]).sum(1)
    for _ in range(count - 1):
        nxt = int(min_dist.argmax())  # argmax returns the first maximum: the shuffle breaks ties
        chosen.append(nxt)
        min_dist = np.minimum(min_dist, (candidates != candidates[nxt]).sum(1))
    return torch.from_numpy(candidates[chosen].astype(np.int64))


def shuffle_tiles(tiles: torch.Tensor, permutations: torch.Tensor,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Reorder tiles [B, T, ...] by a random permutation from the set [K, T] per sample.

    Returns (shuffled tiles, labels [B]) with ``shuffled[b, i] = tiles[b, perm[labels[b], i]]``.
    """
    b, t = tiles.shape[:2]
    labels = randint(generator, len(permutations), (b,), tiles)
    order = permutations.to(tiles.device)[labels]  # [B, T]
    index = order.reshape(b, t, *([1] * (tiles.dim() - 2))).expand_as(tiles)
    return tiles.gather(1, index), labels


__all__ = ["grid_tiles", "half_turn", "hamming_permutations", "num_half_turns", "num_rotations",
           "rotate", "shuffle_tiles"]
