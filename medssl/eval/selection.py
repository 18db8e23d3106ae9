"""Model selection on a validation score during fine-tuning and pretraining, with early stopping."""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

from medssl.data.types import Split
from medssl.eval.metrics import classification_metrics, multilabel_metrics
from medssl.eval.probes import extract_features, knn_predict


def _rank(score: float) -> float:
    """The score as compared: NaN ranks below every number."""
    return -math.inf if math.isnan(score) else score


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
        """Record ``epoch``'s score (the model before training: -1 in fine-tuning, 0 in pretraining,
        where epochs count those done; NaN ranks below every number); True means stop now."""
        key = _rank(score)
        if self.state is None or key > self._key:
            self.score, self._key, self.epoch = score, key, epoch
            self.state = copy.deepcopy(self.module.state_dict())
        stale = (epoch - self.epoch) * self.per_epoch
        return bool(self.patience_steps and stale > self.patience_steps)

    def restore(self, epoch: int, score: float, state: dict) -> None:
        """Take a best ``epoch`` recorded earlier (a resumed run), with its ``score`` and weights."""
        self.score, self._key, self.epoch, self.state = score, _rank(score), epoch, state


class ValKnnSelection:
    """Choose the pretraining epoch by the encoder's kNN AUC on the validation split (an
    ``on_epoch_end`` callback for ``fit``; ``pretrain.select_on: val_knn``).

    Pretext losses keep falling after the features stop improving for the task: on small medical
    sets SimCLR, MoCo v2 and the puzzles peak after a few epochs (``benchmarks/results/
    pretext_curve_*.md``). The score is a leave-one-out kNN vote (k=20, Wu et al. 2018) among the
    validation images' frozen features, so it needs the validation labels only, which fine-tuning
    already selects on, and never the training labels a 1% study does not have.

    Args:
        backbone: the encoder whose features are scored and whose weights are kept.
        val: validation images uint8 ``[N, C, *S]`` and labels ``[N]`` (``[N, L]`` multi-label).
        num_classes: classes (labels, multi-label).
        every: score after every this many epochs (and the encoder before training, epoch 0).
        per_epoch, planned_steps, patience: early stopping as :class:`BestEpoch` (0: never).
        precision: autocast dtype for the feature pass.
    """

    def __init__(self, backbone: nn.Module, val: Split, num_classes: int, every: int = 1, *,
                 per_epoch: int = 1, planned_steps: int = 0, patience: float = 0.0,
                 precision: torch.dtype | None = None, k: int = 20) -> None:
        self.backbone, self.val, self.num_classes, self.every = backbone, val, num_classes, every
        self.precision, self.k = precision, k
        self.best = BestEpoch(backbone, per_epoch, planned_steps, patience)
        self.first = math.nan  # the score before training
        self.scored = -1  # epochs done at the last score

    def restore(self, epoch: int, score: float, first: float, state: dict[str, torch.Tensor]) -> None:
        """Continue a resumed run's selection: its best ``epoch``, ``score`` and weights so far."""
        self.best.restore(epoch, score, state)
        self.first = first

    def score(self) -> float:
        """The backbone's leave-one-out kNN AUC on the validation split, as it is now (NaN when
        its features are not finite: ranked below every score, never kept over one)."""
        feats = extract_features(self.backbone, self.val.images, precision=self.precision)
        if not np.isfinite(feats).all():
            return math.nan
        y, multi = self.val.labels.numpy(), self.val.labels.dim() == 2
        probs = knn_predict(feats, y, feats, self.num_classes, self.k, multi, leave_one_out=True)
        return (multilabel_metrics(y, probs) if multi else classification_metrics(y, probs))["auc"]

    def start(self) -> float:
        """Score the encoder before training (epoch 0, a candidate like any other)."""
        self.first = self.score()
        self.best.update(0, self.first)
        self.scored = 0
        return self.first

    def __call__(self, epoch: int) -> dict[str, float | bool]:
        """``fit``'s ``on_epoch_end(epoch)``: after epoch ``epoch`` (0-based), i.e. ``epoch + 1``
        epochs done (the last may be cut short by a time budget), score every ``every``-th;
        ``stop`` once patience runs out."""
        return {} if (epoch + 1) % self.every else self.finish(epoch + 1)

    def finish(self, epochs_done: int) -> dict[str, float | bool]:
        """Score the encoder after ``epochs_done`` epochs unless done already (the end of a run
        whose length is not a multiple of ``every``)."""
        if self.scored == epochs_done:
            return {}
        auc, self.scored = self.score(), epochs_done
        return {"val_knn_auc": auc, "epochs_done": epochs_done, "stop": self.best.update(epochs_done, auc)}
