"""VICReg: invariance between views, variance and decorrelation within each view.

Bardes, Ponce & LeCun, "VICReg: Variance-Invariance-Covariance Regularization for
Self-Supervised Learning", ICLR 2022.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from medssl.losses import vicreg_loss
from medssl.models.heads import projection_mlp
from medssl.transforms.augment import ViewAugment, two_views


@dataclass
class VICRegConfig:
    sim_weight: float = 25.0  # lambda
    var_weight: float = 25.0  # mu
    cov_weight: float = 1.0  # nu
    proj_hidden_dim: int = 1024  # 3-layer expander with BN (8192 in the paper)
    proj_dim: int = 1024


class VICReg(nn.Module):
    """VICReg around any registered backbone; ``training_step`` takes {"image": [B, C, *S]}."""

    def __init__(self, backbone: nn.Module, augment: ViewAugment, cfg: VICRegConfig) -> None:
        super().__init__()
        self.backbone, self.augment, self.cfg = backbone, augment, cfg
        self.projector = projection_mlp(backbone.num_features, cfg.proj_hidden_dim, cfg.proj_dim,
                                        num_layers=3)

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["image"]
        views = two_views(self.augment, x)  # [2B, C, *S]
        z1, z2 = self.projector(self.backbone(views)).chunk(2)
        c = self.cfg
        return vicreg_loss(z1, z2, c.sim_weight, c.var_weight, c.cov_weight, gather=True)
