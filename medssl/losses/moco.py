"""InfoNCE losses of MoCo v2 (keys from a queue) and MoCo v3 (keys from the batch).

He et al., "Momentum Contrast for Unsupervised Visual Representation Learning", CVPR 2020 (eq. 1);
Chen et al., "Improved Baselines with Momentum Contrastive Learning" (MoCo v2), arXiv 2003.04297;
Chen, Xie & He, "An Empirical Study of Training Self-Supervised Vision Transformers", ICCV 2021.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medssl.losses.distributed import gather as gather_all
from medssl.losses.distributed import rank
from medssl.losses.fp32 import fp32


@fp32
def moco_infonce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor,
                 temperature: float = 0.2) -> torch.Tensor:
    """MoCo InfoNCE: each query's positive is its key, the negatives are the queue.

    Args:
        q: [B, D] queries (online encoder).
        k: [B, D] keys (momentum encoder; detached here).
        queue: [K, D] L2-normalised keys of earlier batches.
        temperature: tau.

    Returns:
        Scalar: mean over the batch of -log(exp(q.k+/t) / (exp(q.k+/t) + sum_queue exp(q.k-/t))).
    """
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k.detach().float(), dim=1)
    pos = (q * k).sum(dim=1, keepdim=True)  # [B, 1]
    neg = q @ queue.detach().float().T  # [B, K]
    logits = torch.cat([pos, neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


@fp32
def moco_v3_loss(q: torch.Tensor, k: torch.Tensor, temperature: float = 0.2,
                 gather: bool = False) -> torch.Tensor:
    """MoCo v3 contrastive loss (Alg. 1): keys of the other samples in the (global) batch are negatives.

    Args:
        q: [B, D] predictions of the online encoder for one view.
        k: [B, D] momentum-encoder keys of the other view (detached here).
        temperature: tau; the loss is scaled by 2 tau as in the paper's code.
        gather: use the keys of all processes when torch.distributed is initialised.

    Returns:
        Scalar loss; symmetrise by calling it for (q1, k2) and (q2, k1) and summing.
    """
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k.detach().float(), dim=1)
    keys = gather_all(k) if gather else k  # [W * B, D]
    logits = q @ keys.T / temperature  # [B, W * B]
    offset = rank() * len(q) if gather else 0
    labels = torch.arange(len(q), device=q.device) + offset
    return 2 * temperature * F.cross_entropy(logits, labels)
