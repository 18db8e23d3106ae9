"""DINO self-distillation loss and teacher centering.

Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021 (eq. 1-4, Alg. 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medssl.losses.distributed import all_reduce_mean
from medssl.losses.fp32 import fp32


@fp32
def dino_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], center: torch.Tensor,
              student_temp: float = 0.1, teacher_temp: float = 0.04) -> torch.Tensor:
    """Cross-entropy between sharpened, centred teacher and student distributions over crops.

    Args:
        student: V tensors [B, K], student logits for every crop (global crops first).
        teacher: G tensors [B, K], teacher logits for the G global crops (detached here).
        center: [K] (or [1, K]) running mean of teacher logits, subtracted before the softmax.
        student_temp: tau_s.
        teacher_temp: tau_t (DINO warms it up from 0.04 to 0.07).

    Returns:
        Scalar: mean over (teacher crop g, student crop v != g) pairs of
        -sum_k softmax((t_g - c) / tau_t)_k log_softmax(s_v / tau_s)_k, averaged over the batch.
    """
    targets = [F.softmax((t.detach().float() - center) / teacher_temp, dim=-1) for t in teacher]
    log_probs = [F.log_softmax(s.float() / student_temp, dim=-1) for s in student]
    total, terms = 0.0, 0
    for g, t in enumerate(targets):
        for v, lp in enumerate(log_probs):
            if v == g:  # the same view: no loss
                continue
            total = total + (-(t * lp).sum(dim=-1)).mean()
            terms += 1
    return total / terms


@torch.no_grad()
@fp32
def update_center(center: torch.Tensor, teacher: list[torch.Tensor], momentum: float = 0.9,
                  gather: bool = False) -> torch.Tensor:
    """New center ``m * center + (1 - m) * mean of teacher logits`` over crops and the (global) batch.

    Args:
        center: [1, K] current center.
        teacher: G tensors [B, K] of teacher logits.
        momentum: m (0.9 in DINO).
        gather: average the batch mean over processes when torch.distributed is initialised.
    """
    mean = torch.cat([t.float() for t in teacher]).mean(dim=0, keepdim=True)
    if gather:
        mean = all_reduce_mean(mean)
    return center * momentum + mean * (1 - momentum)
