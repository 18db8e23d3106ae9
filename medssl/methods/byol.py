"""BYOL: an online network predicts a slowly moving target network's projection of another view.

Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning", NeurIPS 2020.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from medssl.losses import byol_loss
from medssl.models.heads import projection_mlp
from medssl.models.utils import cosine_momentum, ema_update, momentum_copy
from medssl.transforms.augment import ViewAugment, two_views


@dataclass
class BYOLConfig:
    momentum: float = 0.99  # base target momentum, raised to 1 on a half cosine (0.996 in the paper,
    #                         whose runs are 100x longer than a CPU budget allows)
    proj_hidden_dim: int = 512  # 4096 in the paper
    proj_dim: int = 128  # 256 in the paper
    pred_hidden_dim: int = 512


def embedding_std(z: torch.Tensor) -> torch.Tensor:
    """Mean per-dimension std of L2-normalised embeddings [B, D]: ~1/sqrt(D) healthy, 0 collapsed."""
    return F.normalize(z.detach().float(), dim=1).std(dim=0).mean()


class BYOL(nn.Module):
    """BYOL around any registered backbone; ``training_step`` takes {"image": [B, C, *S]}."""

    def __init__(self, backbone: nn.Module, augment: ViewAugment, cfg: BYOLConfig) -> None:
        super().__init__()
        self.backbone, self.augment, self.cfg = backbone, augment, cfg
        self.projector = projection_mlp(backbone.num_features, cfg.proj_hidden_dim, cfg.proj_dim)
        self.predictor = projection_mlp(cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim)
        self.target_backbone = momentum_copy(backbone)
        self.target_projector = momentum_copy(self.projector)

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["image"]
        views = two_views(self.augment, x)  # [2B, C, *S]
        z = self.projector(self.backbone(views))
        p1, p2 = self.predictor(z).chunk(2)
        with torch.no_grad():
            t1, t2 = self.target_projector(self.target_backbone(views)).chunk(2)
        loss = (byol_loss(p1, t2) + byol_loss(p2, t1)) / 2  # symmetrised, as in the paper
        return {"loss": loss, "z_std": embedding_std(z)}

    def after_step(self, step: int, total: int) -> None:
        m = cosine_momentum(self.cfg.momentum, step, total)
        ema_update(self.target_backbone, self.backbone, m)
        ema_update(self.target_projector, self.projector, m)
