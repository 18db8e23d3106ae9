"""Context restoration: undo random swaps of patch pairs.

Chen et al., "Self-supervised learning for medical image analysis using image context
restoration", Medical Image Analysis 2019. The corruption keeps the intensity distribution and
breaks only the spatial context; a U-Net over the registered backbone restores it (L2 loss).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from medssl.methods.restorative import RestorativeMethod
from medssl.transforms.augment import ViewAugment
from medssl.transforms.corruptions import Corrupted, context_swap


@dataclass
class ContextRestorationConfig:
    num_swaps: int = 10  # T, patch-pair swaps per image (overlapping draws are skipped)
    patch_frac: float = 0.15  # patch side / image side (4 px at 28 px)
    loss: str = "mse"  # "mse" (paper) or "l1"
    augment: bool = False  # view augmentation before corrupting
    crop: bool = True  # no augment: random data.size-sided crops of larger (3D) inputs
    decoder: str = "unet"  # "unet" (skips; reusable for segmentation) or "plain" (before classification)


class ContextRestoration(RestorativeMethod):
    """Context restoration around a registered CNN backbone; batch {"image": [B, C, *S]}."""

    name = "context_restoration"

    def __init__(self, backbone: nn.Module, augment: ViewAugment, cfg: ContextRestorationConfig) -> None:
        super().__init__(backbone, augment, cfg.augment, cfg.loss, cfg.crop, cfg.decoder)
        self.cfg = cfg

    def corrupt(self, x: torch.Tensor) -> Corrupted:
        return context_swap(x, self.generator, self.cfg.num_swaps, self.cfg.patch_frac)
