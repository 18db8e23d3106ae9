"""Rubik's cube: recover the order and the orientation of shuffled, turned sub-cubes.

Zhuang et al., "Self-supervised Feature Learning for 3D Medical Images by Playing a Rubik's
Cube", MICCAI 2019; optional cube masking from Zhu et al., "Rubik's Cube+", MedIA 2020. The
volume is cut into 2x2x2 cubes (random crops of their cells, leaving gaps), shuffled by one of a
fixed max-Hamming permutation set and each cube turned by 180 degrees about one of the three
axes or not (4 classes; 2D: 2x2 tiles turned by 0 or 180 degrees). Every cube goes through the
shared backbone; heads predict the permutation (from all features), each cube's turn and, with
masking, whether it was masked.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from medssl.methods._common import GeneratorState, classification_logs, new_generator
from medssl.models.heads import projection_mlp
from medssl.transforms.augment import ViewAugment
from medssl.transforms.corruptions import inpaint
from medssl.transforms.corruptions.base import coin, randint, select
from medssl.transforms.puzzles import (
    grid_tiles,
    half_turn,
    hamming_permutations,
    num_half_turns,
    shuffle_tiles,
)


@dataclass
class RubikConfig:
    num_permutations: int = 100  # cube orders in the fixed set (of 8! in 3D; all 24 in 2D)
    crop_frac: float = 0.85  # cube side / cell side: gaps against edge-matching shortcuts
    mask_p: float = 0.0  # Rubik's cube+ masking: chance a cube gets a noise-filled box (0 = off)
    hidden_dim: int = 512  # hidden width of the order classifier
    permutation_seed: int = 0  # the set depends on this seed only, not on the run's seed
    augment: bool = True  # view augmentation before cutting cubes


class Rubik(GeneratorState, nn.Module):
    """Rubik's cube around any registered backbone; batch {"image": [B, C, *S]}."""

    def __init__(self, backbone: nn.Module, augment: ViewAugment, cfg: RubikConfig) -> None:
        super().__init__()
        self.backbone, self.cfg = backbone, cfg
        self.augment = augment if cfg.augment else None
        dims, feats = backbone.spatial_dims, backbone.num_features
        self.num_cubes, self.num_turns = 2 ** dims, num_half_turns(dims)
        self.register_buffer("permutations", hamming_permutations(self.num_cubes, cfg.num_permutations,
                                                                  cfg.permutation_seed))
        self.order_head = projection_mlp(self.num_cubes * feats, cfg.hidden_dim, len(self.permutations))
        self.turn_head = nn.Linear(feats, self.num_turns)  # per cube, shared across positions
        self.mask_head = nn.Linear(feats, 1) if cfg.mask_p > 0 else None
        self.generator = new_generator()

    def scramble(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """x [B, C, *S] -> cubes [B * T, C, *t] and labels: ``order`` [B], ``turn`` and ``masked`` [B * T]."""
        g = self.generator
        cubes = grid_tiles(x, 2, self.cfg.crop_frac, g)
        cubes, order = shuffle_tiles(cubes, self.permutations, g)
        cubes = cubes.flatten(0, 1)
        turn = randint(g, self.num_turns, (len(cubes),), x)
        cubes = half_turn(cubes, turn)
        masked = coin(g, self.cfg.mask_p, len(cubes), x)
        if self.cfg.mask_p > 0:
            cubes = select(masked, inpaint(cubes, g, max_holes=1, size=(0.4, 0.6), margin=0).input, cubes)
        return cubes, {"order": order, "turn": turn, "masked": masked}

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["image"]
        if self.augment is not None:
            x = self.augment(x)
        cubes, labels = self.scramble(x)
        feats = self.backbone(cubes)  # [B * T, F]
        order_logits = self.order_head(feats.reshape(len(x), -1))  # [B, T * F] -> [B, K]
        order_loss, order_acc = classification_logs(order_logits, labels["order"])
        turn_loss, turn_acc = classification_logs(self.turn_head(feats), labels["turn"])
        out = {"loss/order": order_loss.detach(), "loss/turn": turn_loss.detach(),
               "acc/order": order_acc, "acc/turn": turn_acc}
        loss = order_loss + turn_loss
        if self.mask_head is not None:
            mask_loss = F.binary_cross_entropy_with_logits(self.mask_head(feats).float().squeeze(1),
                                                           labels["masked"].float())
            loss, out["loss/mask"] = loss + mask_loss, mask_loss.detach()
        return {"loss": loss, **out}
