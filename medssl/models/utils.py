"""Momentum (EMA) target networks and freezing, as plain helper functions (no base class).

Used by MoCo, BYOL and DINO: the target is a frozen ``copy.deepcopy`` of the online network,
moved towards it after every optimizer step by ``ema_update`` with a ``cosine_momentum`` schedule.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def freeze(module: nn.Module) -> nn.Module:
    """Turn off gradients for every parameter of ``module``; returns it."""
    return module.requires_grad_(False)


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen deep copy of ``module`` to serve as the momentum (teacher) network."""
    return freeze(copy.deepcopy(module))


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """``target <- momentum * target + (1 - momentum) * online``, parameter by parameter.

    Buffers (BatchNorm running statistics) are not averaged: the target keeps its own, updated
    by its own forward passes, as in MoCo and BYOL. ``momentum = 1`` leaves the target unchanged.
    """
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.lerp_(o.detach(), 1.0 - momentum)


def cosine_momentum(base: float, step: int, total: int, final: float = 1.0) -> float:
    """Momentum rising from ``base`` at step 0 to ``final`` at ``total`` on a half cosine.

    BYOL (Grill et al., NeurIPS 2020), eq. in Sec. 3.2: ``1 - (1 - base) (cos(pi k / K) + 1) / 2``.
    """
    progress = min(max(step / max(total, 1), 0.0), 1.0)
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2


def linear_warmup(start: float, end: float, step: float, warmup_steps: float) -> float:
    """``start`` -> ``end`` linearly over ``warmup_steps``, then ``end`` (DINO teacher temperature)."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return end
    return start + (end - start) * step / warmup_steps
