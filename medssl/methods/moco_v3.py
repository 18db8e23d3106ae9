"""MoCo v3: symmetric contrastive loss against momentum keys of the same batch, no queue.

Chen, Xie & He, "An Empirical Study of Training Self-Supervised Vision Transformers", ICCV 2021.
Works with the CNNs and with ``vit_tiny`` (optionally with the random, frozen patch projection
the paper recommends for stability).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from medssl.losses import moco_v3_loss
from medssl.models.heads import projection_mlp
from medssl.models.utils import cosine_momentum, ema_update, freeze, momentum_copy
from medssl.transforms.augment import ViewAugment, two_views


@dataclass
class MoCoV3Config:
    temperature: float = 0.2  # 0.2 in the paper (ViT and ResNet)
    momentum: float = 0.99  # base momentum, raised to 1 on a half cosine
    proj_hidden_dim: int = 512  # 3-layer projector with BN (4096-256 in the paper)
    proj_dim: int = 128
    pred_hidden_dim: int = 512  # 2-layer predictor with BN
    freeze_patch_embed: bool = False  # ViT only: keep the random patch projection fixed (Sec. 4.2)


class MoCoV3(nn.Module):
    """MoCo v3 around any registered backbone; ``training_step`` takes {"image": [B, C, *S]}."""

    def __init__(self, backbone: nn.Module, augment: ViewAugment, cfg: MoCoV3Config) -> None:
        super().__init__()
        self.backbone, self.augment, self.cfg = backbone, augment, cfg
        if cfg.freeze_patch_embed and hasattr(backbone, "patch_embed"):
            freeze(backbone.patch_embed)
        self.projector = projection_mlp(backbone.num_features, cfg.proj_hidden_dim, cfg.proj_dim,
                                        num_layers=3, last_bn=True)
        self.predictor = projection_mlp(cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim, last_bn=True)
        self.momentum_backbone = momentum_copy(backbone)
        self.momentum_projector = momentum_copy(self.projector)

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["image"]
        views = two_views(self.augment, x)  # [2B, C, *S]
        q1, q2 = self.predictor(self.projector(self.backbone(views))).chunk(2)
        with torch.no_grad():
            k1, k2 = self.momentum_projector(self.momentum_backbone(views)).chunk(2)
        t = self.cfg.temperature
        loss = moco_v3_loss(q1, k2, t, gather=True) + moco_v3_loss(q2, k1, t, gather=True)
        return {"loss": loss}

    def after_step(self, step: int, total: int) -> None:
        m = cosine_momentum(self.cfg.momentum, step, total)
        ema_update(self.momentum_backbone, self.backbone, m)
        ema_update(self.momentum_projector, self.projector, m)
