"""Models Genesis: restore the original image from a composition of four corruptions.

Zhou et al., "Models Genesis: Generic Autodidactic Models for 3D Medical Image Analysis",
MICCAI 2019 / MedIA 2021. Per sample: local pixel shuffling, then a non-linear (Bézier)
intensity transform, then in- or out-painting, each with its own probability; an encoder-decoder
(here a U-Net over the registered backbone) restores the original under an MSE loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from medssl.methods.restorative import RestorativeMethod
from medssl.transforms.augment import ViewAugment
from medssl.transforms.corruptions import Corrupted, models_genesis


@dataclass
class GenesisConfig:
    nonlinear_p: float = 0.9  # probability of the Bézier intensity transform (paper default)
    shuffle_p: float = 0.5  # probability of local pixel shuffling (paper default)
    paint_p: float = 0.9  # probability of in- or out-painting (paper default)
    inpaint_rate: float = 0.2  # share of the paints that in-paint; the rest out-paint (paper default)
    loss: str = "mse"  # "mse" (paper) or "l1"
    augment: bool = False  # view augmentation before corrupting (the paper only flips)
    crop: bool = True  # no augment: random data.size-sided crops of larger (3D) inputs
    decoder: str = "unet"  # "unet" (skips; reusable for segmentation) or "plain" (before classification)


class Genesis(RestorativeMethod):
    """Models Genesis around a registered CNN backbone; ``training_step`` takes {"image": [B, C, *S]}."""

    name = "genesis"

    def __init__(self, backbone: nn.Module, augment: ViewAugment, cfg: GenesisConfig) -> None:
        super().__init__(backbone, augment, cfg.augment, cfg.loss, cfg.crop, cfg.decoder)
        self.cfg = cfg

    def corrupt(self, x: torch.Tensor) -> Corrupted:
        c = self.cfg
        return models_genesis(x, self.generator, c.nonlinear_p, c.shuffle_p, c.paint_p, c.inpaint_rate)
