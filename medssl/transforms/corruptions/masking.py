"""Random patch masking for masked autoencoders, with patchify/unpatchify for 2D and 3D.

He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022 (Sec. 3): a uniform
random subset of patches is kept per sample (argsort of noise, as in the reference code).
"""

from __future__ import annotations

import math

import torch

from medssl.transforms.corruptions.base import Corrupted, uniform


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """[B, C, *S] -> [B, N, patch^d * C]; patches in row-major grid order (a conv patch embedding's
    ``flatten(2)`` order), each patch's values ordered (*patch, C)."""
    b, c, *shape = x.shape
    grid = [n // patch for n in shape]
    d = len(shape)
    x = x.reshape(b, c, *(v for g in grid for v in (g, patch)))
    x = x.permute(0, *range(2, 2 + 2 * d, 2), *range(3, 3 + 2 * d, 2), 1)
    return x.reshape(b, math.prod(grid), patch ** d * c)


def unpatchify(patches: torch.Tensor, patch: int, channels: int, grid: tuple[int, ...]) -> torch.Tensor:
    """Inverse of ``patchify``: [B, N, patch^d * C] -> [B, C, *(grid * patch)]."""
    b, d = patches.shape[0], len(grid)
    x = patches.reshape(b, *grid, *([patch] * d), channels)
    inv = [0, 2 * d + 1, *(v for i in range(d) for v in (1 + i, 1 + d + i))]
    return x.permute(inv).reshape(b, channels, *(g * patch for g in grid))


def random_patch_mask(x: torch.Tensor, generator: torch.Generator, patch_size: int = 4,
                      mask_ratio: float = 0.75) -> Corrupted:
    """Mask a random ``mask_ratio`` of the patch grid per sample.

    Returns:
        ``Corrupted`` whose input is x with masked patches set to mid-grey 0.5 (for display; MAE
        itself drops them), meta ``mask`` [B, N] bool (True = masked), ``ids_keep`` [B, N_keep]
        (visible patch indices) and ``ids_restore`` [B, N] (undoes the shuffle).
    """
    b, c, *shape = x.shape
    if any(n % patch_size for n in shape):
        raise ValueError(f"image size {tuple(shape)} is not a multiple of patch size {patch_size}")
    n = math.prod(s // patch_size for s in shape)
    keep = max(1, round(n * (1 - mask_ratio)))
    ids_shuffle = uniform(generator, (b, n), x).argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    mask = torch.ones(b, n, dtype=torch.bool, device=x.device)
    mask[:, :keep] = False
    mask = mask.gather(1, ids_restore)
    patches = patchify(x, patch_size).masked_fill(mask[..., None], 0.5)
    shown = unpatchify(patches, patch_size, c, tuple(s // patch_size for s in shape))
    return Corrupted(shown.to(x.dtype), x, {"mask": mask, "ids_keep": ids_shuffle[:, :keep],
                                            "ids_restore": ids_restore})
