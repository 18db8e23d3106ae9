import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medssl.eval.metrics import classification_metrics


def test_binary_metrics_against_hand_counts():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    p1 = np.array([0.9, 0.6, 0.2, 0.7, 0.1, 0.3, 0.4, 0.05])
    m = classification_metrics(y, np.stack([1 - p1, p1], 1))
    # called positive: 0.9, 0.6, 0.7 -> TP 2, FP 1, FN 1, TN 4
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(4 / 5)
    assert m["fpr"] == pytest.approx(1 / 5)
    assert m["acc"] == pytest.approx(6 / 8)
    assert m["balanced_acc"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    # AUC by pair counting: positives beat 12 of 15 (pos, neg) pairs... count it naively
    pairs = [(a > b) + 0.5 * (a == b) for a in p1[y == 1] for b in p1[y == 0]]
    assert m["auc"] == pytest.approx(np.mean(pairs))


def test_positive_class_zero_swaps_sensitivity_and_specificity():
    y = np.array([1, 1, 0, 0, 0])
    p1 = np.array([0.8, 0.3, 0.6, 0.2, 0.1])
    probs = np.stack([1 - p1, p1], 1)
    m1, m0 = classification_metrics(y, probs, 1), classification_metrics(y, probs, 0)
    assert m0["sensitivity"] == pytest.approx(m1["specificity"])
    assert m0["specificity"] == pytest.approx(m1["sensitivity"])
    assert m0["auc"] == pytest.approx(m1["auc"])


def test_multiclass_macro_ovr_auc():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 10)
    probs = rng.dirichlet(np.ones(4), size=40)
    m = classification_metrics(y, probs)
    assert m["auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"))
    assert "sensitivity" not in m
    assert m["acc"] == pytest.approx((probs.argmax(1) == y).mean())
