"""BestEpoch (medssl/eval/selection.py): the kept epoch and the early stop, by hand."""

from __future__ import annotations

import math

import torch
from torch import nn

from medssl.eval.selection import BestEpoch


def test_keeps_the_earliest_best_epoch_and_stops_past_the_patience():
    net = nn.Linear(2, 1)
    best = BestEpoch(net, per_epoch=10, planned_steps=100, patience=0.25)  # stop when > 25 steps stale
    stops = []
    for epoch, score in enumerate([0.5, 0.7, 0.7, 0.6, 0.6]):
        with torch.no_grad():
            net.bias.fill_(epoch)  # the weights tell which epoch was kept
        stops.append(best.update(epoch, score))
    # stale steps after epochs 0..4: 0, 0, 10, 20, 30 (the best stays epoch 1: equal is not better)
    assert stops == [False, False, False, False, True]
    assert (best.epoch, best.score) == (1, 0.7)
    assert best.state["bias"].item() == 1.0 and net.bias.item() == 4.0  # a copy, not the live tensor


def test_no_patience_never_stops_and_the_start_is_a_candidate():
    net = nn.Linear(2, 1)
    best = BestEpoch(net, per_epoch=3, planned_steps=30)
    assert not best.update(-1, 0.9)  # the model before training (LP-FT's probe)
    assert not any(best.update(e, 0.1) for e in range(50))
    assert best.epoch == -1


def test_nan_scores_rank_below_every_number():
    best = BestEpoch(nn.Linear(2, 1), per_epoch=1, planned_steps=10, patience=0.5)
    best.update(0, math.nan)  # e.g. an AUC of a validation set with one class
    assert best.epoch == 0 and best.state is not None  # weights are kept all the same
    best.update(1, 0.0)
    best.update(2, math.nan)
    assert (best.epoch, best.score) == (1, 0.0)


def test_restore_continues_from_a_recorded_best():
    net = nn.Linear(2, 1)
    best = BestEpoch(net, per_epoch=1, planned_steps=10, patience=0.2)
    best.restore(3, 0.8, {"weight": torch.zeros(1, 2), "bias": torch.tensor([3.0])})
    assert not best.update(4, 0.8)  # equal to the restored best: not better, 1 step stale
    assert best.epoch == 3 and best.state["bias"].item() == 3.0
    assert best.update(6, 0.7)  # 3 steps stale > 2
    best.update(7, 0.9)
    assert (best.epoch, best.score) == (7, 0.9)
