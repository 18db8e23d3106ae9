"""Model selection on a validation score during fine-tuning, with early stopping."""

from __future__ import annotations

import copy
import math

from torch import nn


class BestEpoch:
    """Keep the weights of the epoch with the best validation score (the earliest of equal scores)
    and say when to stop: once that epoch lies more than ``patience`` x ``planned_steps`` steps
    behind (0: never; the schedule stays planned for the whole run either way).

    Args:
        module: the module whose ``state_dict`` is kept.
        per_epoch: optimisation steps per epoch.
        planned_steps: the run's planned steps (epochs x ``per_epoch``).
        patience: share of ``planned_steps`` without improvement that ends training.
    """

    def __init__(self, module: nn.Module, per_epoch: int, planned_steps: int, patience: float = 0.0) -> None:
        self.module, self.per_epoch = module, per_epoch
        self.patience_steps = patience * planned_steps
        self.score, self.epoch, self.state = -1.0, -1, None
        self._key = -math.inf

    def update(self, epoch: int, score: float) -> bool:
        """Record ``epoch``'s score (-1: the model before training; NaN ranks below every number);
        True means stop now."""
        key = -math.inf if math.isnan(score) else score
        if self.state is None or key > self._key:
            self.score, self._key, self.epoch = score, key, epoch
            self.state = copy.deepcopy(self.module.state_dict())
        stale = (epoch - self.epoch) * self.per_epoch
        return bool(self.patience_steps and stale > self.patience_steps)
