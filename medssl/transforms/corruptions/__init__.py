"""Corruptions for restorative pretext tasks, batched, 2D and 3D, seeded by explicit generators.

Each is ``fn(x, generator, **params) -> Corrupted(input, target, meta)`` on x [B, C, *S] in [0, 1].
"""

from medssl.transforms.corruptions.base import Corrupted
from medssl.transforms.corruptions.context import context_swap
from medssl.transforms.corruptions.genesis import local_pixel_shuffle, models_genesis, nonlinear_intensity
from medssl.transforms.corruptions.masking import patchify, random_patch_mask, unpatchify
from medssl.transforms.corruptions.noise import gaussian_blur, gaussian_noise
from medssl.transforms.corruptions.painting import inpaint, outpaint, paint

CORRUPTIONS = {
    "nonlinear": nonlinear_intensity,
    "local_shuffle": local_pixel_shuffle,
    "inpaint": inpaint,
    "outpaint": outpaint,
    "paint": paint,
    "genesis": models_genesis,
    "context_swap": context_swap,
    "noise": gaussian_noise,
    "blur": gaussian_blur,
    "mae_mask": random_patch_mask,
}

__all__ = ["CORRUPTIONS", "Corrupted", "context_swap", "gaussian_blur", "gaussian_noise", "inpaint",
           "local_pixel_shuffle", "models_genesis", "nonlinear_intensity", "outpaint", "paint",
           "patchify", "random_patch_mask", "unpatchify"]
