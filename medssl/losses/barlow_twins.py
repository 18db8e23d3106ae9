"""Barlow Twins redundancy-reduction loss.

Zbontar et al., "Barlow Twins: Self-Supervised Learning via Redundancy Reduction", ICML 2021 (eq. 1-2).
"""

from __future__ import annotations

import torch

from medssl.losses.distributed import gather as gather_all
from medssl.losses.fp32 import fp32


@fp32
def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 5e-3,
                      gather: bool = False, eps: float = 1e-5) -> torch.Tensor:
    """sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2 with C the cross-correlation of the views.

    Args:
        z1: [B, D] embeddings of the first view.
        z2: [B, D] embeddings of the second view.
        lambd: weight of the redundancy (off-diagonal) term.
        gather: standardise and correlate over the global batch when torch.distributed is initialised.
        eps: added to the variance before standardising.

    Returns:
        Scalar loss. C = z1n^T z2n / N, z standardised per dimension over the (global) batch of N.
    """
    z1, z2 = z1.float(), z2.float()
    if gather:
        z1, z2 = gather_all(z1), gather_all(z2)
    n = z1.shape[0]
    z1 = (z1 - z1.mean(0)) / (z1.var(0, unbiased=False) + eps).sqrt()
    z2 = (z2 - z2.mean(0)) / (z2.var(0, unbiased=False) + eps).sqrt()
    c = z1.T @ z2 / n  # [D, D]
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on_diag + lambd * off_diag
