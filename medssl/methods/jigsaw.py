"""Jigsaw puzzles: classify which permutation from a fixed set shuffled the image's tiles.

Noroozi & Favaro, "Unsupervised Learning of Visual Representations by Solving Jigsaw Puzzles",
ECCV 2016; 3D jigsaw as in Taleb et al., NeurIPS 2020. Every tile goes through the shared
backbone (a siamese encoder), the tile features are concatenated in shuffled order and an MLP
predicts the permutation's index. The permutation set (max-min Hamming distance, seeded) is a
buffer, so it is saved with the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from medssl.errors import MedsslError
from medssl.methods._common import GeneratorState, classification_logs, new_generator
from medssl.models.heads import projection_mlp
from medssl.transforms.augment import ViewAugment
from medssl.transforms.puzzles import grid_tiles, hamming_permutations, shuffle_tiles


@dataclass
class JigsawConfig:
    grid: int = 2  # tiles per side: 2x2 in 2D (14 px tiles at 28 px), 2x2x2 in 3D; 3 only in 2D
    num_permutations: int = 100  # size of the fixed set (capped at tiles!, e.g. all 24 for 2x2)
    crop_frac: float = 0.85  # random crop of each cell: gaps and jitter against edge-matching shortcuts
    hidden_dim: int = 512  # hidden width of the permutation classifier
    permutation_seed: int = 0  # the set depends on this seed only, not on the run's seed
    augment: bool = True  # view augmentation before tiling


class Jigsaw(GeneratorState, nn.Module):
    """Jigsaw around any registered backbone; batch {"image": [B, C, *S]}."""

    def __init__(self, backbone: nn.Module, augment: ViewAugment, cfg: JigsawConfig) -> None:
        super().__init__()
        tiles = cfg.grid ** backbone.spatial_dims
        if cfg.grid < 2 or tiles > 9:
            raise MedsslError(f"jigsaw: grid must give 4-9 tiles (2 or 3 in 2D, 2 in 3D), got {cfg.grid}")
        self.backbone, self.cfg = backbone, cfg
        self.augment = augment if cfg.augment else None
        self.register_buffer("permutations", hamming_permutations(tiles, cfg.num_permutations,
                                                                  cfg.permutation_seed))
        self.head = projection_mlp(tiles * backbone.num_features, cfg.hidden_dim, len(self.permutations))
        self.generator = new_generator()

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["image"]
        if self.augment is not None:
            x = self.augment(x)
        tiles = grid_tiles(x, self.cfg.grid, self.cfg.crop_frac, self.generator)  # [B, T, C, *t]
        shuffled, labels = shuffle_tiles(tiles, self.permutations, self.generator)
        feats = self.backbone(shuffled.flatten(0, 1))  # [B * T, F]
        feats = feats.reshape(len(x), -1)  # [B, T * F] in shuffled order
        loss, acc = classification_logs(self.head(feats), labels)
        return {"loss": loss, "acc": acc}
