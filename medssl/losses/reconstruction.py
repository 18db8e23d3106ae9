"""Reconstruction losses of the restorative methods (Models Genesis, context restoration, DAE, MAE).

Computed in fp32 whatever the autocast dtype of the prediction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, region: torch.Tensor | None = None,
                        kind: str = "mse") -> torch.Tensor:
    """Mean squared (``kind="mse"``) or absolute (``"l1"``) error, over everything or a region.

    Args:
        pred: [B, C, *S] restored images.
        target: [B, C, *S] originals.
        region: optional bool mask broadcastable to pred (e.g. [B, 1, *S]): average only there.
    """
    if kind not in ("mse", "l1"):
        raise ValueError(f"reconstruction loss must be mse or l1, got '{kind}'")
    err = F.mse_loss if kind == "mse" else F.l1_loss
    pred, target = pred.float(), target.float()
    if region is None:
        return err(pred, target)
    weight = region.expand_as(pred).float()
    return (err(pred, target, reduction="none") * weight).sum() / weight.sum().clamp(min=1.0)


def masked_patch_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                      norm_pix: bool = False, eps: float = 1e-6) -> torch.Tensor:
    """MAE's loss: per-patch MSE averaged over the masked patches only (He et al. 2022, Sec. 3).

    Args:
        pred: [B, N, P] predicted patch values.
        target: [B, N, P] true patch values (``patchify`` of the image).
        mask: [B, N] bool, True where the patch was masked.
        norm_pix: normalise each target patch by its own mean and std (MAE's best variant).
    """
    target = target.float()
    if norm_pix:
        mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + eps).sqrt()
    per_patch = (pred.float() - target).pow(2).mean(dim=-1)  # [B, N]
    m = mask.float()
    return (per_patch * m).sum() / m.sum().clamp(min=1.0)
