"""Denoising corruptions: additive Gaussian noise and Gaussian blur, per-sample strengths.

Vincent et al., "Extracting and composing robust features with denoising autoencoders", ICML 2008.
"""

from __future__ import annotations

import math

import torch

from medssl.transforms.corruptions.base import Corrupted, coin, per_sample, select, uniform


def gaussian_noise(x: torch.Tensor, generator: torch.Generator, std: tuple[float, float] = (0.05, 0.2),
                   p: float = 1.0) -> Corrupted:
    """x + N(0, sigma^2), sigma ~ U(``std``) per sample, clipped to [0, 1]. meta: ``std`` [B]."""
    b = x.shape[0]
    sigma = uniform(generator, (b,), x, *std)
    noise = torch.randn(tuple(x.shape), generator=generator, device=generator.device).to(x.device)
    noisy = (x + per_sample(sigma, x) * noise).clamp(0, 1).to(x.dtype)
    applied = coin(generator, p, b, x)
    return Corrupted(select(applied, noisy, x), x, {"std": sigma * applied, "applied": applied})


def blur(x: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample sigma [B] along every spatial axis, edges replicated.

    Hand-written because kornia's blur is 2D-only and fixes one kernel per batch; x: [B, C, *S].
    """
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (taps / sigma[:, None].clamp(min=1e-3)) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # [B, K]
    out = x.float()
    for dim in range(2, x.dim()):
        n = x.shape[dim]
        idx = (torch.arange(n, device=x.device)[:, None] + taps.long()).clamp(0, n - 1)  # [n, K]
        windows = out.index_select(dim, idx.reshape(-1))
        windows = windows.reshape(*out.shape[:dim], n, len(taps), *out.shape[dim + 1:])
        k = kernel.reshape(x.shape[0], *([1] * (dim - 1)), 1, len(taps), *([1] * (x.dim() - dim - 1)))
        out = (windows * k).sum(dim=dim + 1)
    return out.to(x.dtype)


def gaussian_blur(x: torch.Tensor, generator: torch.Generator, sigma: tuple[float, float] = (0.5, 1.5),
                  p: float = 1.0) -> Corrupted:
    """Gaussian blur with sigma ~ U(``sigma``) voxels per sample. meta: ``sigma`` [B]."""
    b = x.shape[0]
    s = uniform(generator, (b,), x, *sigma)
    blurred = blur(x, s, radius=math.ceil(3 * sigma[1]))
    applied = coin(generator, p, b, x)
    return Corrupted(select(applied, blurred, x), x, {"sigma": s * applied, "applied": applied})
