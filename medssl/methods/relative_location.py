"""Relative patch location: given the centre patch of a 3x3 grid and one neighbour, say which.

Doersch et al., "Unsupervised Visual Representation Learning by Context Prediction", ICCV 2015
(8 neighbours in 2D); in 3D the 26 neighbours of a 3x3x3 grid (Taleb et al., NeurIPS 2020).
Both patches go through the shared backbone; an MLP on the concatenated features classifies.
Patches are random crops of their cells, leaving gaps and jitter as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from medssl.methods._common import GeneratorState, classification_logs, new_generator
from medssl.models.heads import projection_mlp
from medssl.transforms.augment import ViewAugment
from medssl.transforms.corruptions.base import randint
from medssl.transforms.puzzles import grid_tiles


@dataclass
class RelativeLocationConfig:
    crop_frac: float = 0.8  # patch side / cell side (7 px patches in 9 px cells at 28 px)
    hidden_dim: int = 512  # hidden width of the location classifier
    augment: bool = True  # view augmentation before cutting patches


class RelativeLocation(GeneratorState, nn.Module):
    """Relative patch location around any registered backbone; batch {"image": [B, C, *S]}."""

    def __init__(self, backbone: nn.Module, augment: ViewAugment, cfg: RelativeLocationConfig) -> None:
        super().__init__()
        self.backbone, self.cfg = backbone, cfg
        self.augment = augment if cfg.augment else None
        cells = 3 ** backbone.spatial_dims
        self.centre = cells // 2
        self.register_buffer("neighbours", torch.tensor([i for i in range(cells) if i != self.centre]),
                             persistent=False)
        self.head = projection_mlp(2 * backbone.num_features, cfg.hidden_dim, cells - 1)
        self.generator = new_generator()

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["image"]
        if self.augment is not None:
            x = self.augment(x)
        tiles = grid_tiles(x, 3, self.cfg.crop_frac, self.generator)  # [B, 9 or 27, C, *t]
        labels = randint(self.generator, len(self.neighbours), (len(x),), x)
        other = tiles[torch.arange(len(x), device=x.device), self.neighbours[labels]]
        feats = self.backbone(torch.cat([tiles[:, self.centre], other]))
        centre, neighbour = feats.chunk(2)
        loss, acc = classification_logs(self.head(torch.cat([centre, neighbour], dim=1)), labels)
        return {"loss": loss, "acc": acc}
