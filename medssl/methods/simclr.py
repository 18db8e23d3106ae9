"""SimCLR: two augmented views, a projection MLP and NT-Xent.

Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", ICML 2020.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from medssl.losses import nt_xent
from medssl.models.heads import projection_mlp
from medssl.transforms.augment import ViewAugment, two_views


@dataclass
class SimCLRConfig:
    temperature: float = 0.1
    proj_hidden_dim: int = 512
    proj_dim: int = 128


class SimCLR(nn.Module):
    """SimCLR around any registered backbone; ``training_step`` takes {"image": [B, C, *S]}."""

    def __init__(self, backbone: nn.Module, augment: ViewAugment, cfg: SimCLRConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.augment = augment
        self.cfg = cfg
        self.projector = projection_mlp(backbone.num_features, cfg.proj_hidden_dim, cfg.proj_dim)

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["image"]
        views = two_views(self.augment, x)  # [2B, C, *S]
        z = self.projector(self.backbone(views))
        z1, z2 = z.chunk(2)
        return {"loss": nt_xent(z1, z2, self.cfg.temperature, gather=True)}
