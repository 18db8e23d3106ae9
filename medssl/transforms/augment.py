"""Batched, on-device view augmentations for grey-scale and RGB medical images, 2D and 3D.

Geometric ops come from kornia (batched, per-sample parameters). Intensity ops are written as
tensor one-liners so that the same code serves [B, C, H, W] and [B, C, D, H, W]; no hue or
saturation jitter, which is meaningless for grey-scale modalities.
Randomness comes from torch's generator, seeded once per run (``medssl.engine.seed_everything``),
because kornia draws its parameters from it.

Inputs and outputs: float tensors in [0, 1], shape [B, C, *S].
"""

from __future__ import annotations

from dataclasses import dataclass

import kornia.augmentation as K
import torch
from torch import nn


@dataclass
class AugmentConfig:
    crop_scale: tuple[float, float] = (0.4, 1.0)  # random resized crop area (2D) / zoom (3D)
    hflip: float = 0.5
    vflip: float = 0.0  # off by default: most anatomy has an up and a down
    rotation: float = 15.0  # degrees
    brightness: float = 0.3  # additive shift, in [0, 1] intensity units
    contrast: float = 0.3  # multiplicative factor range 1 +- contrast around the mean
    gamma: tuple[float, float] = (0.7, 1.5)
    blur_p: float = 0.3
    noise_p: float = 0.3
    noise_std: float = 0.05
    p_intensity: float = 0.8  # probability of brightness/contrast/gamma jitter per sample


def _per_sample(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Uniform [lo, hi) values shaped [B, 1, 1, ...] to broadcast over x."""
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    return torch.empty(shape, device=x.device).uniform_(lo, hi)


def _apply_with_p(x: torch.Tensor, y: torch.Tensor, p: float) -> torch.Tensor:
    keep = _per_sample(x, 0.0, 1.0) < p
    return torch.where(keep, y, x)


class IntensityJitter(nn.Module):
    """Brightness, contrast and gamma jitter, Gaussian noise; any number of spatial dims."""

    def __init__(self, cfg: AugmentConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        dims = tuple(range(1, x.dim()))
        mean = x.mean(dim=dims, keepdim=True)
        y = (x - mean) * _per_sample(x, 1 - c.contrast, 1 + c.contrast) + mean
        y = y + _per_sample(x, -c.brightness, c.brightness)
        y = y.clamp(0, 1) ** _per_sample(x, *c.gamma)
        x = _apply_with_p(x, y, c.p_intensity)
        noisy = (x + torch.randn_like(x) * c.noise_std).clamp(0, 1)
        return _apply_with_p(x, noisy, c.noise_p)


def _geometric_2d(size: int, c: AugmentConfig) -> list[nn.Module]:
    ops: list[nn.Module] = [K.RandomResizedCrop((size, size), scale=c.crop_scale)]
    if c.hflip:
        ops.append(K.RandomHorizontalFlip(p=c.hflip))
    if c.vflip:
        ops.append(K.RandomVerticalFlip(p=c.vflip))
    if c.rotation:
        ops.append(K.RandomAffine(degrees=c.rotation, p=0.5))
    if c.blur_p:
        ops.append(K.RandomGaussianBlur((3, 3), sigma=(0.1, 1.0), p=c.blur_p))
    return ops


def _geometric_3d(size: int, c: AugmentConfig) -> list[nn.Module]:
    # kornia has no 3D resized crop: an affine zoom plays its part (scale >= 1 crops in).
    zoom = (1.0, 1.0 / c.crop_scale[0] ** (1 / 3))
    ops: list[nn.Module] = [K.RandomAffine3D(degrees=c.rotation, scale=zoom, p=1.0)]
    if c.hflip:
        ops.append(K.RandomHorizontalFlip3D(p=c.hflip))
    if c.vflip:
        ops.append(K.RandomVerticalFlip3D(p=c.vflip))
    return ops


class ViewAugment(nn.Module):
    """One random view of each image: geometric (kornia) then intensity jitter.

    Args:
        spatial_dims: 2 or 3.
        size: output side length (inputs are square/cubic MedMNIST-style images).
        cfg: augmentation strengths.
    """

    def __init__(self, spatial_dims: int, size: int, cfg: AugmentConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or AugmentConfig()
        geometric = _geometric_2d if spatial_dims == 2 else _geometric_3d
        self.geometric = nn.Sequential(*geometric(size, cfg))
        self.intensity = IntensityJitter(cfg)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.intensity(self.geometric(x).clamp(0, 1)).contiguous()


def light_augment(spatial_dims: int, size: int) -> ViewAugment:
    """Mild augmentation for supervised fine-tuning: flips, small crops, no noise or blur."""
    cfg = AugmentConfig(crop_scale=(0.8, 1.0), rotation=10.0, brightness=0.1, contrast=0.1,
                        gamma=(0.9, 1.1), blur_p=0.0, noise_p=0.0, p_intensity=0.5)
    return ViewAugment(spatial_dims, size, cfg)
