"""medssl.stats.metrics against values counted by hand (not against scikit-learn where it matters)."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import medssl.eval.metrics as eval_metrics
from medssl.errors import MedsslError
from medssl.stats.metrics import (
    Confusion,
    classification_metrics,
    confusion_at,
    expected_calibration_error,
    multilabel_metrics,
    operating_points,
    target_name,
    threshold_for_sensitivity,
    youden_threshold,
)

# The binary case used throughout: 3 positives, 5 negatives. Sorted by score:
#   0.9 P | 0.7 N | 0.6 P | 0.4 N | 0.3 N | 0.2 P | 0.1 N | 0.05 N
Y = np.array([1, 1, 1, 0, 0, 0, 0, 0])
P1 = np.array([0.9, 0.6, 0.2, 0.7, 0.1, 0.3, 0.4, 0.05])


def _probs(p1: np.ndarray) -> np.ndarray:
    return np.stack([1 - p1, p1], 1)


def _pairs_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Naive AUC: share of (positive, negative) pairs ranked right, ties count half."""
    return float(np.mean([(a > b) + 0.5 * (a == b) for a in pos for b in neg]))


# ------------------------------------------------------------------ kept from tests/test_metrics.py

def test_binary_metrics_against_hand_counts():
    m = classification_metrics(Y, _probs(P1))
    # called positive: 0.9, 0.6, 0.7 -> TP 2, FP 1, FN 1, TN 4
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(4 / 5)
    assert m["fpr"] == pytest.approx(1 / 5)
    assert m["acc"] == pytest.approx(6 / 8)
    assert m["balanced_acc"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert m["auc"] == pytest.approx(_pairs_auc(P1[Y == 1], P1[Y == 0]))


def test_positive_class_zero_swaps_sensitivity_and_specificity():
    y = np.array([1, 1, 0, 0, 0])
    p1 = np.array([0.8, 0.3, 0.6, 0.2, 0.1])
    probs = _probs(p1)
    m1, m0 = classification_metrics(y, probs, 1), classification_metrics(y, probs, 0)
    assert m0["sensitivity"] == pytest.approx(m1["specificity"])
    assert m0["specificity"] == pytest.approx(m1["sensitivity"])
    assert m0["auc"] == pytest.approx(m1["auc"])
    # and PPV <-> NPV: class 1: TP 1 (0.8), FP 1 (0.6), FN 1 (0.3), TN 2 -> PPV 1/2, NPV 2/3
    assert (m1["ppv"], m1["npv"]) == pytest.approx((1 / 2, 2 / 3))
    assert (m0["ppv"], m0["npv"]) == pytest.approx((2 / 3, 1 / 2))


def test_multiclass_macro_ovr_auc():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 10)
    probs = rng.dirichlet(np.ones(4), size=40)
    m = classification_metrics(y, probs)
    assert m["auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"))
    assert "sensitivity" not in m and "f1" not in m and "kappa" not in m
    assert m["acc"] == pytest.approx((probs.argmax(1) == y).mean())
    assert m["ece"] == pytest.approx(expected_calibration_error(y, probs))


def test_eval_metrics_is_a_re_export():
    assert eval_metrics.classification_metrics is classification_metrics
    assert eval_metrics.operating_points is operating_points


# ------------------------------------------------------------------ thresholded counts

@pytest.mark.parametrize(("threshold", "counts"), [
    # called: 0.9 P, 0.7 N, 0.6 P                     -> TP 2, FP 1, TN 4, FN 1 (0.2)
    (0.5, (2, 1, 4, 1)),
    # called: 0.9 P, 0.7 N, 0.6 P, 0.4 N, 0.3 N        -> TP 2, FP 3, TN 2, FN 1 (0.2)
    (0.25, (2, 3, 2, 1)),
    # called: also 0.2 P                                -> TP 3, FP 3, TN 2, FN 0
    (0.15, (3, 3, 2, 0)),
    # a score equal to the threshold is called positive: 0.9 P, 0.7 N -> TP 1, FP 1, TN 4, FN 2
    (0.7, (1, 1, 4, 2)),
])
def test_confusion_and_rates_at_thresholds(threshold, counts):
    tp, fp, tn, fn = counts
    assert confusion_at(Y, P1, threshold) == Confusion(tp, fp, tn, fn)
    m = classification_metrics(Y, _probs(P1), threshold=threshold)
    assert m["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert m["specificity"] == pytest.approx(tn / (tn + fp))
    assert m["fpr"] == pytest.approx(fp / (fp + tn))
    assert m["ppv"] == pytest.approx(tp / (tp + fp))
    assert m["npv"] == pytest.approx(tn / (tn + fn))
    assert m["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))


def test_rates_at_half_and_at_0_25_written_out():
    m = classification_metrics(Y, _probs(P1))  # TP 2, FP 1, TN 4, FN 1
    assert (m["ppv"], m["npv"], m["f1"]) == pytest.approx((2 / 3, 4 / 5, 4 / 6))
    m = classification_metrics(Y, _probs(P1), threshold=0.25)  # TP 2, FP 3, TN 2, FN 1
    assert (m["sensitivity"], m["specificity"], m["fpr"]) == pytest.approx((2 / 3, 2 / 5, 3 / 5))
    assert (m["ppv"], m["npv"], m["f1"]) == pytest.approx((2 / 5, 2 / 3, 4 / 8))
    # acc and balanced_acc stay those of the argmax prediction whatever the threshold
    assert m["acc"] == pytest.approx(6 / 8)


def test_rates_with_empty_denominators_are_zero():
    m = classification_metrics(Y, _probs(P1), threshold=0.95)  # nothing called positive
    assert (m["sensitivity"], m["ppv"], m["f1"], m["specificity"]) == (0.0, 0.0, 0.0, 1.0)


# ------------------------------------------------------------------ operating points

def test_youden_threshold_enumerated_by_hand():
    # threshold: (TP, FP) -> J = TP/3 - FP/5
    #   0.9: (1,0) .333 | 0.7: (1,1) .133 | 0.6: (2,1) .467 | 0.4: (2,2) .267
    #   0.3: (2,3) .067 | 0.2: (3,3) .400 | 0.1: (3,4) .200 | 0.05: (3,5) 0
    assert youden_threshold(Y, P1) == 0.6


@pytest.mark.parametrize(("scores", "y", "expected"), [
    # 3 positives, 6 negatives; J = TP/3 - FP/6 is 1/3 at 0.95 (1,0), 0.8 (2,2) and 0.6 (3,4):
    # the highest sensitivity of the three is at 0.6
    ([0.95, 0.9, 0.85, 0.8, 0.7, 0.65, 0.6, 0.5, 0.4], [1, 0, 0, 1, 0, 0, 1, 0, 0], 0.6),
    # 5 positives, 5 negatives; J = TP/5 - FP/5 is 2/5 at 0.9 (2,0) and at 0.8 (3,1), the maximum;
    # in floats 3/5 - 1/5 = 0.39999999999999997 < 0.4, so the tie must be compared on counts
    ([0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2], [1, 1, 0, 1, 0, 0, 1, 0, 1, 0], 0.8),
])
def test_youden_ties_go_to_the_higher_sensitivity(scores, y, expected):
    assert youden_threshold(np.array(y), np.array(scores)) == expected


# 10 positives, 10 negatives. Sorted: .95P .9P .88N .85P .8P .75P .7P .65P .6P (TP 8) .5N .45N .4N
# .35P (TP 9) .3N .25N .2P (TP 10) .15N .1N .05N .02N
SENS_POS = np.array([0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.35, 0.2])
SENS_NEG = np.array([0.88, 0.5, 0.45, 0.4, 0.3, 0.25, 0.15, 0.1, 0.05, 0.02])
SENS_Y = np.r_[np.ones(10, int), np.zeros(10, int)]
SENS_S = np.r_[SENS_POS, SENS_NEG]


# target -> positives needed -> the score of that positive: 0.9 -> 9 -> 0.35, 0.8 -> 8 -> 0.6,
# 0.7 -> 7 -> 0.65 (7 / 10 == 0.7 exactly), 1.0 -> 10 -> 0.2, 0.05 -> 1 -> 0.95
@pytest.mark.parametrize(("target", "expected"), [(0.9, 0.35), (0.8, 0.6), (0.7, 0.65), (1.0, 0.2),
                                                  (0.05, 0.95)])
def test_threshold_for_sensitivity_by_hand(target, expected):
    assert threshold_for_sensitivity(SENS_Y, SENS_S, target) == expected


def test_sensitivity_target_rule_reaches_target_and_next_higher_candidate_does_not():
    t = threshold_for_sensitivity(SENS_Y, SENS_S, 0.9)
    assert confusion_at(SENS_Y, SENS_S, t).tp / 10 >= 0.9  # 9 of 10
    higher = np.unique(SENS_S[t < SENS_S])[0]  # 0.4, a negative: 8 of 10 above it
    assert higher == 0.4
    assert confusion_at(SENS_Y, SENS_S, higher).tp / 10 < 0.9


def test_operating_points_apply_validation_thresholds_to_test():
    p_test = np.array([0.8, 0.55, 0.65, 0.2, 0.1])
    y_test = np.array([1, 1, 0, 0, 0])
    out = operating_points(Y, _probs(P1), y_test, _probs(p_test), positive_class=1, targets=(0.9,))
    # 0.5 on test: called 0.8 P, 0.55 P, 0.65 N -> TP 2, FP 1, TN 2, FN 0
    assert out["threshold@0.5"] == 0.5
    assert (out["sensitivity@0.5"], out["specificity@0.5"], out["fpr@0.5"]) == pytest.approx(
        (1, 2 / 3, 1 / 3))
    assert (out["ppv@0.5"], out["npv@0.5"], out["f1@0.5"]) == pytest.approx((2 / 3, 1, 4 / 5))
    # Youden on validation is 0.6 (see above); test: called 0.8 P, 0.65 N -> TP 1, FP 1, TN 2, FN 1
    assert out["threshold@youden"] == 0.6
    assert (out["sensitivity@youden"], out["specificity@youden"]) == pytest.approx((1 / 2, 2 / 3))
    assert (out["ppv@youden"], out["npv@youden"], out["f1@youden"]) == pytest.approx((1 / 2, 2 / 3, 1 / 2))
    assert (out["val_sensitivity@youden"], out["val_specificity@youden"]) == pytest.approx((2 / 3, 4 / 5))
    # 90% validation sensitivity needs all 3 positives: threshold 0.2 (validation FP 3 -> spec 2/5);
    # test: called 0.8 P, 0.55 P, 0.65 N, 0.2 N -> TP 2, FP 2, TN 1, FN 0
    assert out["threshold@sens90"] == 0.2
    assert (out["val_sensitivity@sens90"], out["val_specificity@sens90"]) == pytest.approx((1, 2 / 5))
    assert (out["sensitivity@sens90"], out["specificity@sens90"], out["fpr@sens90"]) == pytest.approx(
        (1, 1 / 3, 2 / 3))
    assert (out["ppv@sens90"], out["npv@sens90"], out["f1@sens90"]) == pytest.approx((1 / 2, 1, 2 / 3))
    # [N] positive-class scores give the same numbers as [N, 2] probabilities
    assert operating_points(Y, P1, y_test, p_test) == out


def test_operating_point_names_and_flat_float_values():
    assert [target_name(t) for t in (0.9, 0.95, 0.975, 0.8)] == ["sens90", "sens95", "sens97.5", "sens80"]
    out = operating_points(Y, P1, Y, P1, targets=(0.9, 0.95))
    assert {k.split("@")[1] for k in out} == {"0.5", "youden", "sens90", "sens95"}
    assert all(isinstance(v, float) for v in out.values())


def test_thresholds_need_both_classes_on_validation():
    with pytest.raises(MedsslError, match="both classes"):
        youden_threshold(np.ones(4, int), np.arange(4) / 4)
    with pytest.raises(MedsslError, match="target"):
        threshold_for_sensitivity(Y, P1, 0.0)


# ------------------------------------------------------------------ kappa

def _quadratic_kappa_by_hand(y: np.ndarray, pred: np.ndarray, k: int) -> float:
    """1 - sum(W * O) / sum(W * E): O observed counts, E = outer(row sums, col sums) / N,
    W[i, j] = (i - j)^2 / (k - 1)^2 (Cohen 1968)."""
    n = len(y)
    observed = np.zeros((k, k))
    for a, b in zip(y, pred, strict=True):
        observed[a, b] += 1
    expected = np.zeros((k, k))
    weights = np.zeros((k, k))
    for i in range(k):
        for j in range(k):
            expected[i, j] = observed[i, :].sum() * observed[:, j].sum() / n
            weights[i, j] = (i - j) ** 2 / (k - 1) ** 2
    return 1 - (weights * observed).sum() / (weights * expected).sum()


def test_quadratic_kappa_for_ordinal_tasks_matches_the_formula():
    y = np.array([0, 0, 1, 1, 2, 2, 2, 1, 0, 2, 3, 3])
    pred = np.array([0, 1, 1, 2, 2, 2, 1, 1, 0, 0, 3, 1])
    probs = np.full((len(y), 4), 0.1)
    probs[np.arange(len(y)), pred] = 0.7
    m = classification_metrics(y, probs, task="ordinal-regression")
    assert m["kappa"] == pytest.approx(_quadratic_kappa_by_hand(y, pred, 4))
    # perfect agreement is 1
    assert classification_metrics(y, np.eye(4)[y], task="ordinal-regression")["kappa"] == pytest.approx(1)
    assert "kappa" not in classification_metrics(y, probs, task="multi-class")


# ------------------------------------------------------------------ calibration

def test_ece_by_hand():
    # top-class confidence, right or wrong, and its 15-bin (i/15, (i+1)/15]:
    probs = np.array([
        [0.9, 0.1, 0.0],    # y 0: conf 0.90, right -> bin 13 = (0.867, 0.933]
        [0.08, 0.92, 0.0],  # y 0: conf 0.92, wrong -> bin 13
        [0.45, 0.55, 0.0],  # y 1: conf 0.55, right -> bin 8 = (0.533, 0.6]
        [0.7, 0.3, 0.0],    # y 0: conf 0.70, right -> bin 10 = (0.667, 0.733]
        [0.2, 0.72, 0.08],  # y 1: conf 0.72, right -> bin 10
    ])
    y = np.array([0, 0, 1, 0, 1])
    # bin 13: 2 cases, acc 1/2, conf 0.91 -> |0.5 - 0.91| = 0.41, share 2/5
    # bin 8:  1 case,  acc 1,   conf 0.55 -> 0.45, share 1/5
    # bin 10: 2 cases, acc 1,   conf 0.71 -> 0.29, share 2/5
    expected = 2 / 5 * 0.41 + 1 / 5 * 0.45 + 2 / 5 * 0.29  # = 0.37
    assert expected_calibration_error(y, probs) == pytest.approx(expected)


def test_ece_is_zero_for_confident_right_answers():
    assert expected_calibration_error(np.array([0, 1, 1]), np.eye(2)[[0, 1, 1]]) == 0.0


# ------------------------------------------------------------------ multi-label

ML_Y = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0], [0, 1, 0]])
ML_P = np.array([[0.8, 0.3, 0.1], [0.4, 0.7, 0.6], [0.45, 0.9, 0.2],
                 [0.2, 0.75, 0.3], [0.7, 0.1, 0.05], [0.6, 0.5, 0.2]])


def test_multilabel_per_label_auc_is_a_pair_count_and_one_class_labels_are_skipped():
    m = multilabel_metrics(ML_Y, ML_P, label_names=["a", "b", "c"])
    for j, name in enumerate("ab"):
        y, p = ML_Y[:, j], ML_P[:, j]
        assert m[f"auc/{name}"] == pytest.approx(_pairs_auc(p[y == 1], p[y == 0]))
    # a: positives 0.8, 0.45, 0.7 vs negatives 0.4, 0.2, 0.6 -> 3 + 2 + 3 = 8 of 9 pairs
    # b: positives 0.7, 0.9, 0.5 vs negatives 0.3, 0.75, 0.1 -> 2 + 3 + 2 = 7 of 9 pairs
    assert (m["auc/a"], m["auc/b"]) == pytest.approx((8 / 9, 7 / 9))
    assert "auc/c" not in m  # c has no positive case
    assert m["auc"] == pytest.approx((8 / 9 + 7 / 9) / 2)
    assert (m["auc_labels"], m["auc_skipped"]) == (2, 1)


def test_multilabel_accuracy_and_macro_f1_at_half():
    m = multilabel_metrics(ML_Y, ML_P)
    # a: called 0.8 P, 0.7 P, 0.6 N -> TP 2, FP 1, FN 1, TN 2: acc 4/6, F1 4/6
    # b: called 0.7 P, 0.9 P, 0.75 N, 0.5 P -> TP 3, FP 1, FN 0, TN 2: acc 5/6, F1 6/7
    # c: called 0.6 N -> TP 0, FP 1, TN 5: acc 5/6, F1 0
    assert m["acc"] == pytest.approx((4 / 6 + 5 / 6 + 5 / 6) / 3)
    assert m["f1_macro"] == pytest.approx((4 / 6 + 6 / 7 + 0) / 3)
    assert set(m) == {"auc/0", "auc/1", "auc", "auc_labels", "auc_skipped", "acc", "f1_macro"}


def test_multilabel_rejects_bad_shapes_and_labels_without_auc():
    with pytest.raises(MedsslError, match=r"\[N, L\]"):
        multilabel_metrics(ML_Y, ML_P[:, :2])
    with pytest.raises(MedsslError, match="both classes"):
        multilabel_metrics(np.zeros((3, 2), int), np.full((3, 2), 0.3))
