"""Denoising autoencoder: restore the clean image from Gaussian noise (and optionally blur).

Vincent et al., "Extracting and Composing Robust Features with Denoising Autoencoders",
ICML 2008; here with a U-Net over the registered backbone so the encoder transfers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from medssl.methods.restorative import RestorativeMethod
from medssl.transforms.augment import ViewAugment
from medssl.transforms.corruptions import Corrupted, gaussian_blur, gaussian_noise


@dataclass
class DenoisingConfig:
    noise_min: float = 0.05  # per-sample noise std ~ U(noise_min, noise_max), intensities in [0, 1]
    noise_max: float = 0.2
    blur_p: float = 0.0  # also blur (sigma ~ U(0.5, 1.5) voxels) this fraction of samples first
    loss: str = "mse"  # "mse" or "l1"
    augment: bool = False  # view augmentation before corrupting
    crop: bool = True  # no augment: random data.size-sided crops of larger (3D) inputs
    decoder: str = "unet"  # "unet" (skips; reusable for segmentation) or "plain" (before classification)


class Denoising(RestorativeMethod):
    """Denoising autoencoder around a registered CNN backbone; batch {"image": [B, C, *S]}."""

    name = "denoising"

    def __init__(self, backbone: nn.Module, augment: ViewAugment, cfg: DenoisingConfig) -> None:
        super().__init__(backbone, augment, cfg.augment, cfg.loss, cfg.crop, cfg.decoder)
        self.cfg = cfg

    def corrupt(self, x: torch.Tensor) -> Corrupted:
        c = self.cfg
        blurred = gaussian_blur(x, self.generator, p=c.blur_p).input if c.blur_p > 0 else x
        noisy = gaussian_noise(blurred, self.generator, (c.noise_min, c.noise_max))
        return noisy._replace(target=x)
