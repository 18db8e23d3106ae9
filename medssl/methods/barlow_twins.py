"""Barlow Twins: make the views' cross-correlation matrix the identity.

Zbontar et al., "Barlow Twins: Self-Supervised Learning via Redundancy Reduction", ICML 2021.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from medssl.losses import barlow_twins_loss
from medssl.models.heads import projection_mlp
from medssl.transforms.augment import ViewAugment, two_views


@dataclass
class BarlowTwinsConfig:
    lambd: float = 5e-3  # weight of the off-diagonal (redundancy) term
    proj_hidden_dim: int = 1024  # 3-layer projector with BN (8192 in the paper)
    proj_dim: int = 1024


class BarlowTwins(nn.Module):
    """Barlow Twins around any registered backbone; ``training_step`` takes {"image": [B, C, *S]}."""

    def __init__(self, backbone: nn.Module, augment: ViewAugment, cfg: BarlowTwinsConfig) -> None:
        super().__init__()
        self.backbone, self.augment, self.cfg = backbone, augment, cfg
        self.projector = projection_mlp(backbone.num_features, cfg.proj_hidden_dim, cfg.proj_dim,
                                        num_layers=3)

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["image"]
        views = two_views(self.augment, x)  # [2B, C, *S]
        z1, z2 = self.projector(self.backbone(views)).chunk(2)
        return {"loss": barlow_twins_loss(z1, z2, self.cfg.lambd, gather=True)}
