"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR.

Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", ICML 2020.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medssl.losses.distributed import gather as gather_all
from medssl.losses.fp32 import fp32


@fp32
def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1,
            gather: bool = False) -> torch.Tensor:
    """NT-Xent over a batch of positive pairs; every other embedding in both views is a negative.

    Args:
        z1: [B, D] embeddings of the first view.
        z2: [B, D] embeddings of the second view (row i is the positive of ``z1[i]``).
        temperature: softmax temperature tau.
        gather: with several processes, every embedding of the global batch is a negative (the
            loss is the global one on every process; ``gather`` keeps the gradient exact).

    Returns:
        Scalar loss, the mean over all 2B anchors (2WB with ``gather`` over W processes).
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"nt_xent expects two [B, D] tensors, got {tuple(z1.shape)}, {tuple(z2.shape)}")
    if gather:
        z1, z2 = gather_all(z1), gather_all(z2)
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # [2B, D]
    logits = z @ z.T / temperature  # [2B, 2B] cosine similarities
    logits.fill_diagonal_(float("-inf"))  # an anchor is not its own negative
    targets = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(z.device)
    return F.cross_entropy(logits, targets)
