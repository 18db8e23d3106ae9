"""Rotation prediction: classify which rotation was applied to the image.

Gidaris et al., "Unsupervised Representation Learning by Predicting Image Rotations", ICLR 2018
(4 classes in 2D); in 3D, identity + 90/180/270 degrees about each axis (10 classes, as in Taleb
et al., "3D Self-Supervised Methods for Medical Imaging", NeurIPS 2020). Needs square/cubic inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from medssl.methods._common import GeneratorState, classification_logs, new_generator
from medssl.models.heads import projection_mlp
from medssl.transforms.augment import ViewAugment
from medssl.transforms.corruptions.base import randint
from medssl.transforms.puzzles import num_rotations, rotate


@dataclass
class RotationConfig:
    hidden_dim: int = 256  # hidden width of the rotation classifier (MLP with BatchNorm)
    augment: bool = True  # view augmentation before rotating


class Rotation(GeneratorState, nn.Module):
    """Rotation prediction around any registered backbone; batch {"image": [B, C, *S]}."""

    def __init__(self, backbone: nn.Module, augment: ViewAugment, cfg: RotationConfig) -> None:
        super().__init__()
        self.backbone, self.cfg = backbone, cfg
        self.augment = augment if cfg.augment else None
        self.num_classes = num_rotations(backbone.spatial_dims)
        self.head = projection_mlp(backbone.num_features, cfg.hidden_dim, self.num_classes)
        self.generator = new_generator()

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["image"]
        if self.augment is not None:
            x = self.augment(x)
        labels = randint(self.generator, self.num_classes, (len(x),), x)
        logits = self.head(self.backbone(rotate(x, labels)))
        loss, acc = classification_logs(logits, labels)
        return {"loss": loss, "acc": acc}
