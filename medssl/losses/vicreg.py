"""VICReg: variance-invariance-covariance regularisation.

Bardes, Ponce & LeCun, "VICReg: Variance-Invariance-Covariance Regularization for
Self-Supervised Learning", ICLR 2022 (eq. 1-6).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medssl.losses.distributed import gather as gather_all
from medssl.losses.fp32 import fp32


def _variance(z: torch.Tensor, gamma: float, eps: float) -> torch.Tensor:
    std = (z.var(dim=0) + eps).sqrt()
    return F.relu(gamma - std).mean()


def _covariance(z: torch.Tensor) -> torch.Tensor:
    n, d = z.shape
    z = z - z.mean(dim=0)
    cov = z.T @ z / (n - 1)  # [D, D]
    return (cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum()) / d


@fp32
def vicreg_loss(z1: torch.Tensor, z2: torch.Tensor, sim_weight: float = 25.0, var_weight: float = 25.0,
                cov_weight: float = 1.0, gamma: float = 1.0, eps: float = 1e-4,
                gather: bool = False) -> dict[str, torch.Tensor]:
    """VICReg loss of two views' embeddings.

    Args:
        z1: [B, D] embeddings of the first view.
        z2: [B, D] embeddings of the second view.
        sim_weight, var_weight, cov_weight: lambda, mu, nu of the paper (25, 25, 1).
        gamma: target standard deviation per dimension.
        eps: added to the variance inside the square root.
        gather: compute variance and covariance over the global batch when torch.distributed
            is initialised (the invariance term is per sample, so local).

    Returns:
        {"loss": weighted sum, "invariance", "variance", "covariance": unweighted terms}; the
        variance term is the mean over the two views and the covariance the sum, as in the
        authors' code (facebookresearch/vicreg).
    """
    z1, z2 = z1.float(), z2.float()
    inv = F.mse_loss(z1, z2)
    if gather:
        z1, z2 = gather_all(z1), gather_all(z2)
    var = (_variance(z1, gamma, eps) + _variance(z2, gamma, eps)) / 2  # halved as in the official code
    cov = _covariance(z1) + _covariance(z2)
    loss = sim_weight * inv + var_weight * var + cov_weight * cov
    return {"loss": loss, "invariance": inv, "variance": var, "covariance": cov}
