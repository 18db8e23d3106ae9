"""SimSiam: a predictor and a stop-gradient, no momentum encoder and no negatives.

Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from medssl.losses import negative_cosine
from medssl.methods.byol import embedding_std
from medssl.models.heads import projection_mlp
from medssl.transforms.augment import ViewAugment, two_views


@dataclass
class SimSiamConfig:
    proj_hidden_dim: int = 512  # 3-layer projector with BN on every layer (2048 in the paper)
    proj_dim: int = 512
    pred_hidden_dim: int = 128  # bottleneck predictor: proj_dim / 4, as in the paper


class SimSiam(nn.Module):
    """SimSiam around any registered backbone; ``training_step`` takes {"image": [B, C, *S]}."""

    def __init__(self, backbone: nn.Module, augment: ViewAugment, cfg: SimSiamConfig) -> None:
        super().__init__()
        self.backbone, self.augment, self.cfg = backbone, augment, cfg
        self.projector = projection_mlp(backbone.num_features, cfg.proj_hidden_dim, cfg.proj_dim,
                                        num_layers=3, last_bn=True)
        self.predictor = projection_mlp(cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim)

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["image"]
        views = two_views(self.augment, x)  # [2B, C, *S]
        z = self.projector(self.backbone(views))
        p1, p2 = self.predictor(z).chunk(2)
        z1, z2 = z.chunk(2)
        loss = (negative_cosine(p1, z2) + negative_cosine(p2, z1)) / 2  # z detached inside
        return {"loss": loss, "z_std": embedding_std(z)}
