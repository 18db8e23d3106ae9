"""Schedules as plain per-step arrays (after MAE/DINO)."""

from __future__ import annotations

import math


def cosine_schedule(base: float, total_steps: int, warmup_steps: int = 0,
                    final: float = 0.0) -> list[float]:
    """Linear warm-up from 0 to ``base`` over ``warmup_steps``, then cosine decay to ``final``."""
    warmup_steps = min(warmup_steps, total_steps)
    values = [base * (i + 1) / warmup_steps for i in range(warmup_steps)]
    decay = total_steps - warmup_steps
    for i in range(decay):
        values.append(final + 0.5 * (base - final) * (1 + math.cos(math.pi * i / max(decay, 1))))
    return values
