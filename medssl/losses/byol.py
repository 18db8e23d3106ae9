"""Prediction losses of the non-contrastive methods: BYOL and SimSiam.

Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020 (eq. 2);
Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021 (eq. 1-2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medssl.losses.fp32 import fp32


@fp32
def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam's D(p, stopgrad(z)) = -cos(p, z), averaged over the batch. p, z: [B, D] -> scalar.

    The target ``z`` is detached here: the stop-gradient is part of the loss's definition.
    """
    return -F.cosine_similarity(p.float(), z.detach().float(), dim=-1).mean()


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's ||p/|p| - z/|z|||^2 = 2 - 2 cos(p, z), averaged over the batch. p, z: [B, D] -> scalar."""
    return 2 + 2 * negative_cosine(p, z)
