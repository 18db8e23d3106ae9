"""Distortions applied to random regions, with boxes, masks and type labels to learn from.

Felfeliyan et al., "Self-supervised-RCNN for medical image segmentation with limited data
annotation", Comput Med Imaging Graph 2023 (arXiv 2207.11191): distort random regions of an
unlabeled image, then train a network to say where (box, mask), what (distortion type) and to
restore the original pixels. Hand-written because no library generates such labelled regions;
each distortion reuses the whole-image corruptions of this package, composited inside its box.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from medssl.errors import MedsslError
from medssl.transforms.corruptions.base import box_mask, random_boxes, uniform
from medssl.transforms.corruptions.genesis import local_pixel_shuffle, nonlinear_intensity
from medssl.transforms.corruptions.noise import blur, gaussian_noise


def _noise(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return gaussian_noise(x, g, std=(0.1, 0.25)).input


def _blur(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return blur(x, uniform(g, (x.shape[0],), x, 1.0, 2.0), radius=6)


def _shuffle(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return local_pixel_shuffle(x, g, p=1.0, max_block_frac=0.15, rounds=2, cell_p=1.0).input


def _nonlinear(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return nonlinear_intensity(x, g, p=1.0).input


def _cutout(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A constant random grey level (in-painting hole)."""
    value = uniform(g, (x.shape[0],), x).reshape(-1, *([1] * (x.dim() - 1)))
    return value.expand_as(x).to(x.dtype)


def _contrast(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Contrast scaled about the image mean by 0.25-0.5 or 2-3 (half each)."""
    b = x.shape[0]
    low, high = uniform(g, (b,), x, 0.25, 0.5), uniform(g, (b,), x, 2.0, 3.0)
    factor = torch.where(uniform(g, (b,), x) < 0.5, low, high).reshape(-1, *([1] * (x.dim() - 1)))
    mean = x.float().mean(dim=tuple(range(1, x.dim())), keepdim=True)
    return ((x - mean) * factor + mean).clamp(0, 1).to(x.dtype)


# Type k (1-based; 0 is "not distorted") is DISTORTION_TYPES[k - 1].
DISTORTIONS = {"noise": _noise, "blur": _blur, "local_shuffle": _shuffle, "nonlinear": _nonlinear,
               "cutout": _cutout, "contrast": _contrast}
DISTORTION_TYPES = tuple(DISTORTIONS)


class DistortedRegions(NamedTuple):
    """Output of ``distort_regions`` for x [B, C, *S] with up to N regions per sample (d = len(S)).

    Attributes:
        input: [B, C, *S] the distorted image.
        target: [B, C, *S] the original image (the restoration target).
        boxes: [B, N, 2d] int64 region corners ``(lo_0..lo_{d-1}, hi_0..hi_{d-1})`` in tensor axis
            order (hi exclusive); ``xyxy_boxes`` converts to torchvision's 2D order.
        labels: [B, N] int64 distortion type per region, 1..K; 0 where ``valid`` is False.
        valid: [B, N] bool, regions kept (later boxes overlapping an earlier one are dropped).
        masks: [B, N, *S] bool, each region's voxels (exactly its box).
        type_map: [B, *S] int64, the type label per voxel (0 outside every region).
    """

    input: torch.Tensor
    target: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor
    valid: torch.Tensor
    masks: torch.Tensor
    type_map: torch.Tensor


def _overlaps(lo: torch.Tensor, hi: torch.Tensor, j: int, keep: torch.Tensor) -> torch.Tensor:
    """[B] whether box j intersects any kept box before it."""
    inter = (lo[:, :j] < hi[:, j:j + 1]) & (lo[:, j:j + 1] < hi[:, :j])  # [B, j, d]
    return (inter.all(dim=2) & keep[:, :j]).any(dim=1)


def distort_regions(x: torch.Tensor, generator: torch.Generator, max_regions: int = 3,
                    min_frac: float = 0.15, max_frac: float = 0.4,
                    types: tuple[str, ...] = DISTORTION_TYPES) -> DistortedRegions:
    """Distort 1..``max_regions`` disjoint random boxes per sample, each with a random type.

    x: [B, C, *S] in [0, 1]. Box sides are ``min_frac``-``max_frac`` of the image side. Labels
    index ``DISTORTION_TYPES`` (1-based) whatever subset ``types`` allows. All randomness comes
    from ``generator``.
    """
    unknown = set(types) - set(DISTORTIONS)
    if unknown or not types:
        raise ValueError(f"unknown distortion types {sorted(unknown)}; known: {', '.join(DISTORTION_TYPES)}")
    b, d, shape = x.shape[0], x.dim() - 2, tuple(x.shape[2:])
    lo, size = random_boxes(generator, x, max_regions, min_frac, max_frac)  # [B, N, d]
    hi = lo + size
    count = 1 + (uniform(generator, (b,), x) * max_regions).long().clamp(max=max_regions - 1)  # [B]
    valid = torch.arange(max_regions, device=x.device)[None] < count[:, None]
    for j in range(1, max_regions):
        valid[:, j] &= ~_overlaps(lo, hi, j, valid)
    allowed = torch.tensor([DISTORTION_TYPES.index(t) + 1 for t in types], device=x.device)
    pick = (uniform(generator, (b, max_regions), x) * len(allowed)).long().clamp(max=len(allowed) - 1)
    labels = allowed[pick] * valid

    masks = torch.cat([box_mask(lo[:, j:j + 1], size[:, j:j + 1], shape) for j in range(max_regions)], dim=1)
    masks &= valid.reshape(b, max_regions, *([1] * d))  # [B, N, *S]
    out, type_map = x.clone(), torch.zeros(b, *shape, dtype=torch.long, device=x.device)
    for k in allowed.tolist():
        distorted = DISTORTIONS[DISTORTION_TYPES[k - 1]](x, generator)
        region = (masks & (labels == k).reshape(b, max_regions, *([1] * d))).any(dim=1)  # [B, *S]
        out = torch.where(region[:, None], distorted, out)
        type_map[region] = k
    boxes = (torch.cat([lo, hi], dim=2) * valid[..., None]).long()
    return DistortedRegions(out, x, boxes, labels, valid, masks, type_map)


def xyxy_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """2D boxes [..., 4], tensor order ``(y0, x0, y1, x1)`` -> torchvision's float ``(x0, y0, x1, y1)``."""
    return boxes[..., [1, 0, 3, 2]].float()


@dataclass
class RegionArgs:
    """Options every distortion-localisation method shares (its config dataclass extends this)."""

    max_regions: int = 3  # 1..max_regions disjoint distorted boxes per image
    min_frac: float = 0.15  # box side, fraction of the image side
    max_frac: float = 0.4
    types: list[str] = field(default_factory=lambda: list(DISTORTION_TYPES))
    restore_loss: str = "mse"  # "mse" or "l1"

    def check(self, method: str) -> None:
        """MedsslError naming ``method`` for unknown types or losses."""
        if self.restore_loss not in ("mse", "l1"):
            raise MedsslError(f"{method}: restore_loss must be mse or l1, got '{self.restore_loss}'")
        unknown = sorted(set(self.types) - set(DISTORTION_TYPES))
        if unknown or not self.types:
            raise MedsslError(f"{method}: unknown distortion types {unknown}; "
                              f"known: {', '.join(DISTORTION_TYPES)}")

    def distort(self, x: torch.Tensor, generator: torch.Generator) -> DistortedRegions:
        """``distort_regions`` with these options."""
        types = tuple(self.types)
        return distort_regions(x, generator, self.max_regions, self.min_frac, self.max_frac, types)
