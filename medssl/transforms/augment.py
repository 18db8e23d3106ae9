"""Batched, on-device view augmentations for grey-scale and RGB medical images, 2D and 3D.

2D geometric ops come from kornia (batched, per-sample parameters). kornia has no 3D resized
crop, so the 3D path draws one affine per sample (random resized crop with aspect jitter, flips,
small rotations) and samples all volumes with a single ``affine_grid``/``grid_sample`` call.
Intensity ops and the 3-tap Gaussian blur are written as tensor one-liners so that the same code
serves [B, C, H, W] and [B, C, D, H, W]; no hue or saturation jitter, which is meaningless for
grey-scale modalities.
Randomness comes from torch's generator, seeded once per run (``medssl.engine.seed_everything``),
because kornia draws its parameters from it.

Inputs and outputs: float tensors in [0, 1], shape [B, C, *S].
"""

from __future__ import annotations

from dataclasses import dataclass

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class AugmentConfig:
    crop_scale: tuple[float, float] = (0.4, 1.0)  # random resized crop: area (2D) / volume (3D) fraction
    hflip: float = 0.5
    vflip: float = 0.0  # off by default: most anatomy has an up and a down
    dflip: float = 0.0  # 3D only: flip along depth (off: slices have an order head to feet)
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
    ops: list[nn.Module] = [RandomResizedCrop3D(size, c)]
    if c.blur_p:
        ops.append(RandomBlur(c.blur_p))
    return ops


def _rotation(angles: torch.Tensor) -> torch.Tensor:
    """[B, 3] angles (radians) about x, y, z -> [B, 3, 3] rotation matrices Rz @ Ry @ Rx."""
    cos, sin = angles.cos(), angles.sin()
    one, zero = torch.ones_like(cos[:, 0]), torch.zeros_like(cos[:, 0])

    def mat(rows: list[list[torch.Tensor]]) -> torch.Tensor:
        return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)

    rx = mat([[one, zero, zero], [zero, cos[:, 0], -sin[:, 0]], [zero, sin[:, 0], cos[:, 0]]])
    ry = mat([[cos[:, 1], zero, sin[:, 1]], [zero, one, zero], [-sin[:, 1], zero, cos[:, 1]]])
    rz = mat([[cos[:, 2], -sin[:, 2], zero], [sin[:, 2], cos[:, 2], zero], [zero, zero, one]])
    return rz @ ry @ rx


class RandomResizedCrop3D(nn.Module):
    """Per-sample random resized crop + flips + small rotation of volumes, in one batched resample.

    The crop keeps a random fraction ``crop_scale`` of the volume (side lengths jittered by up
    to 15% per axis), placed uniformly inside it; rotations (each axis uniform in +-``rotation``
    degrees, half of the samples) turn the crop box about its centre; corners that leave the
    volume read zeros. [B, C, D, H, W] -> [B, C, size, size, size].
    """

    def __init__(self, size: int, cfg: AugmentConfig) -> None:
        super().__init__()
        self.size, self.cfg = size, cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, b, dev = self.cfg, x.shape[0], x.device
        side = torch.empty(b, 1, device=dev).uniform_(*c.crop_scale) ** (1 / 3)
        jitter = 0.15 if c.crop_scale[0] < 1 else 0.0  # (1, 1) means no crop at all
        frac = (side * torch.empty(b, 3, device=dev).uniform_(-jitter, jitter).exp()).clamp(max=1.0)
        centre = (torch.rand(b, 3, device=dev) * 2 - 1) * (1 - frac)
        # affine_grid's coordinates are (x, y, z) = (W, H, D): hflip, vflip, dflip in that order
        flip_p = torch.tensor([c.hflip, c.vflip, c.dflip], device=dev)
        signs = torch.where(torch.rand(b, 3, device=dev) < flip_p, -1.0, 1.0)
        angles = torch.empty(b, 3, device=dev).uniform_(-c.rotation, c.rotation).deg2rad()
        angles = angles * (torch.rand(b, 1, device=dev) < 0.5)
        theta = torch.cat([_rotation(angles) @ torch.diag_embed(frac * signs), centre[..., None]], 2)
        grid = F.affine_grid(theta, [b, x.shape[1], *([self.size] * 3)], align_corners=False)
        return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def gaussian_blur3(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable 3-tap Gaussian blur along every spatial axis with a per-sample sigma.

    x: [B, C, *S] (any number of spatial dims), sigma: [B] -> [B, C, *S]; edges replicate.
    """
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    side = torch.exp(-0.5 / sigma.clamp(min=1e-3).pow(2)).reshape(shape)
    norm = 1 + 2 * side
    for dim in range(2, x.dim()):
        n = x.shape[dim]
        before = torch.cat([x.narrow(dim, 0, 1), x.narrow(dim, 0, n - 1)], dim)
        after = torch.cat([x.narrow(dim, 1, n - 1), x.narrow(dim, n - 1, 1)], dim)
        x = (x + side * (before + after)) / norm
    return x


class RandomBlur(nn.Module):
    """``gaussian_blur3`` with sigma ~ U(0.1, 1.0) on a random fraction ``p`` of the samples."""

    def __init__(self, p: float, sigma: tuple[float, float] = (0.1, 1.0)) -> None:
        super().__init__()
        self.p, self.sigma = p, sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sigma = torch.empty(x.shape[0], device=x.device).uniform_(*self.sigma)
        chosen = torch.rand(x.shape[0], device=x.device) < self.p
        x = x.clone()
        x[chosen] = gaussian_blur3(x[chosen], sigma[chosen])  # blur only the chosen samples
        return x


class ViewAugment(nn.Module):
    """One random view of each image: geometric (kornia in 2D, batched affine in 3D), blur, then
    intensity jitter and noise.

    Args:
        spatial_dims: 2 or 3.
        size: output side length (inputs are square/cubic MedMNIST-style images; a smaller size
            gives DINO's local crops).
        cfg: augmentation strengths.
    """

    def __init__(self, spatial_dims: int, size: int, cfg: AugmentConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or AugmentConfig()
        geometric = _geometric_2d if spatial_dims == 2 else _geometric_3d
        self.spatial_dims, self.size, self.cfg = spatial_dims, size, cfg
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


def two_views(augment: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Two independent augmentations of each image, stacked: [B, C, *S] -> [2B, C, *S] (view 1 first)."""
    return torch.cat([augment(x), augment(x)])


def random_crop(x: torch.Tensor, size: int | None, generator: torch.Generator) -> torch.Tensor:
    """One random ``size``-sided crop per sample, placed uniformly; axes no longer than ``size``
    stay whole; ``size`` None returns ``x``. [B, C, *S] -> [B, C, *min(S, size)].

    For the restorative and distortion pretexts, which otherwise corrupt whole (padded) volumes:
    Models Genesis (Zhou et al., MedIA 2021) pretrains on random sub-volumes too. Offsets come from
    ``generator`` (the method's own, so a resumed run crops the same). A per-sample slice loop:
    MONAI's RandSpatialCrop crops one unbatched sample per call and draws from numpy's RNG.
    """
    spatial = x.shape[2:]
    if size is None or all(s <= size for s in spatial):
        return x
    crop = [min(s, size) for s in spatial]
    starts = [torch.randint(0, s - c + 1, (x.shape[0],), generator=generator).tolist()
              for s, c in zip(spatial, crop, strict=True)]
    return torch.stack([x[(b, slice(None), *(slice(st[b], st[b] + c) for st, c in zip(starts, crop,
                                                                                      strict=True)))]
                        for b in range(x.shape[0])])
