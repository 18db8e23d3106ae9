"""Classification metrics a clinician asks for, computed from predictions (numpy + scikit-learn).

Conventions used throughout:

- a case is *called positive* at threshold ``t`` when its positive-class score is ``>= t`` (the rule
  of sklearn's ``roc_curve``);
- a rate whose denominator is zero (e.g. PPV when nothing is called positive) is reported as 0;
- operating points (Youden, target sensitivity) are chosen on VALIDATION predictions only and then
  applied unchanged to the test predictions (:func:`operating_points`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    roc_auc_score,
    roc_curve,
)

from medssl.errors import MedsslError

ECE_BINS = 15
_RATE_TOL = 1e-12  # sensitivity targets compare tp / P >= target - tol (0.7 * 10 is 7.000000000000001)


class Confusion(NamedTuple):
    """Counts of a binary decision: true/false positives, true/false negatives."""

    tp: int
    fp: int
    tn: int
    fn: int


def _ratio(num: float, den: float) -> float:
    """num / den, or 0 when den == 0."""
    return float(num / den) if den else 0.0


def confusion_at(y_true: np.ndarray, score: np.ndarray, threshold: float = 0.5,
                 positive_class: int = 1) -> Confusion:
    """Confusion counts when cases with ``score >= threshold`` are called positive.

    Args:
        y_true: [N] labels; ``y_true == positive_class`` is a positive case (0/1 arrays with the
            default ``positive_class=1`` work as they are).
        score: [N] positive-class scores (e.g. probabilities).
        threshold: decision threshold.
        positive_class: the label counted as positive.

    Returns:
        ``Confusion(tp, fp, tn, fn)``; the one place every thresholded metric here is counted.
    """
    is_pos = np.asarray(y_true).astype(int).ravel() == positive_class
    called = np.asarray(score, dtype=np.float64).ravel() >= threshold
    if is_pos.shape != called.shape:
        raise MedsslError(f"labels ({is_pos.size}) and scores ({called.size}) differ in length")
    return Confusion(tp=int(np.sum(is_pos & called)), fp=int(np.sum(~is_pos & called)),
                     tn=int(np.sum(~is_pos & ~called)), fn=int(np.sum(is_pos & ~called)))


def rates(c: Confusion) -> dict[str, float]:
    """``sensitivity`` (TPR, recall), ``specificity`` (TNR), ``fpr``, ``ppv`` (precision), ``npv`` and
    ``f1`` = 2TP / (2TP + FP + FN) from confusion counts (0 where a denominator is 0)."""
    return {"sensitivity": _ratio(c.tp, c.tp + c.fn), "specificity": _ratio(c.tn, c.tn + c.fp),
            "fpr": _ratio(c.fp, c.fp + c.tn), "ppv": _ratio(c.tp, c.tp + c.fp),
            "npv": _ratio(c.tn, c.tn + c.fn), "f1": _ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn)}


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error of the top-class confidence (Guo et al., "On Calibration of Modern
    Neural Networks", ICML 2017, eq. 3).

    Confidences are split into ``bins`` equal-width bins ``(i/bins, (i+1)/bins]``; ECE = sum over
    bins of (bin size / N) * |accuracy in bin - mean confidence in bin|. y_true [N] int, probs [N, K].
    """
    y_true = np.asarray(y_true).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    conf, correct = probs.max(1), (probs.argmax(1) == y_true).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)  # right-closed bins
    ece = 0.0
    for b in np.unique(which):
        inside = which == b
        ece += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    return float(ece)


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, positive_class: int = 1,
                           threshold: float = 0.5, task: str | None = None) -> dict[str, float]:
    """Metrics of single-label predictions.

    Args:
        y_true: [N] integer labels.
        probs: [N, K] class probabilities (rows sum to 1).
        positive_class: for K == 2, the class counted as "positive" (e.g. 0 = malignant).
        threshold: for K == 2, a case is called positive when ``probs[:, positive_class] >= threshold``.
        task: MedMNIST task name; ``"ordinal-regression"`` adds ``kappa``.

    Returns:
        ``auc`` (binary, or macro one-vs-rest for K > 2), ``acc`` and ``balanced_acc`` (of the argmax
        prediction), ``ece`` (:func:`expected_calibration_error`, 15 bins); for K == 2 also
        ``sensitivity``, ``specificity``, ``fpr``, ``ppv``, ``npv``, ``f1`` at ``threshold``; for
        ordinal tasks ``kappa`` (Cohen's quadratic weighted kappa of the argmax prediction).
    """
    y_true = np.asarray(y_true).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) != len(y_true):
        raise MedsslError(f"probs must be [N, K] with N = {len(y_true)} labels, got shape {probs.shape}")
    k = probs.shape[1]
    pred = probs.argmax(1)
    out = {"acc": accuracy_score(y_true, pred), "balanced_acc": balanced_accuracy_score(y_true, pred)}
    if k == 2:
        score = probs[:, positive_class]
        out["auc"] = roc_auc_score(y_true == positive_class, score)
        out.update(rates(confusion_at(y_true, score, threshold, positive_class)))
    else:
        out["auc"] = roc_auc_score(y_true, probs, multi_class="ovr", average="macro",
                                   labels=list(range(k)))
    out["ece"] = expected_calibration_error(y_true, probs)
    if task == "ordinal-regression":
        out["kappa"] = cohen_kappa_score(y_true, pred, labels=list(range(k)), weights="quadratic")
    return {name: float(v) for name, v in out.items()}


def _roc_counts(y_val: np.ndarray, score_val: np.ndarray,
                positive_class: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Candidate thresholds (every distinct score, decreasing) with their integer TP and FP counts."""
    is_pos = np.asarray(y_val).astype(int).ravel() == positive_class
    n_pos, n_neg = int(is_pos.sum()), int((~is_pos).sum())
    if n_pos == 0 or n_neg == 0:
        raise MedsslError("choosing a threshold needs validation cases of both classes "
                          f"({n_pos} positive, {n_neg} negative)")
    fpr, tpr, thr = roc_curve(is_pos, np.asarray(score_val, dtype=np.float64).ravel(),
                              drop_intermediate=False)
    # drop sklearn's leading +inf threshold (nothing called positive): it is no operating point
    tp, fp = np.rint(tpr[1:] * n_pos).astype(np.int64), np.rint(fpr[1:] * n_neg).astype(np.int64)
    return thr[1:], tp, fp, n_pos, n_neg


def youden_threshold(y_val: np.ndarray, score_val: np.ndarray, positive_class: int = 1) -> float:
    """Threshold maximising Youden's J = sensitivity + specificity - 1 (Youden, Cancer 1950) over the
    ROC thresholds of the validation scores.

    Ties (equal J, compared exactly on integer counts) go to the higher sensitivity, i.e. the lowest
    tied threshold: missing a positive is usually the costlier error. y_val [N], score_val [N].
    """
    thr, tp, fp, n_pos, n_neg = _roc_counts(y_val, score_val, positive_class)
    j = tp * n_neg - fp * n_pos  # J * n_pos * n_neg, integer so ties are exact
    best = np.flatnonzero(j == j.max())
    return float(thr[best[np.argmax(tp[best])]])


def threshold_for_sensitivity(y_val: np.ndarray, score_val: np.ndarray, target: float = 0.90,
                              positive_class: int = 1) -> float:
    """The largest threshold whose validation sensitivity is >= ``target`` (a validation score).

    The highest threshold keeps specificity as high as the sensitivity target allows. Any target in
    (0, 1] is reachable: the lowest score calls every case positive. y_val [N], score_val [N].
    """
    if not 0 < target <= 1:
        raise MedsslError(f"sensitivity target must be in (0, 1], got {target}")
    thr, tp, _, n_pos, _ = _roc_counts(y_val, score_val, positive_class)
    ok = tp / n_pos >= target - _RATE_TOL  # tp grows as the threshold falls: the first hit is the largest
    return float(thr[np.argmax(ok)])


def _positive_score(p: np.ndarray, positive_class: int) -> np.ndarray:
    """[N] positive-class scores from [N] scores or [N, 2] probabilities."""
    p = np.asarray(p, dtype=np.float64)
    return p[:, positive_class] if p.ndim == 2 else p


def target_name(target: float) -> str:
    """Operating-point name of a sensitivity target: 0.9 -> ``sens90``, 0.975 -> ``sens97.5``."""
    return f"sens{round(target * 100, 6):g}"


def operating_points(y_val: np.ndarray, p_val: np.ndarray, y_test: np.ndarray, p_test: np.ndarray,
                     positive_class: int = 1, targets: Sequence[float] = (0.9,)) -> dict[str, float]:
    """Binary test metrics at thresholds chosen on validation predictions only.

    Args:
        y_val, y_test: [N] labels (``== positive_class`` is positive).
        p_val, p_test: [N, 2] class probabilities or [N] positive-class scores.
        positive_class: the label counted as positive.
        targets: validation sensitivities to reach (each gives a ``sens<100*target>`` point).

    Returns:
        Flat keys ``<metric>@<point>`` with point ``0.5`` (fixed threshold), ``youden``
        (:func:`youden_threshold`) and ``sens90``, ``sens95``, ... (:func:`threshold_for_sensitivity`).
        Test metrics: ``sensitivity``, ``specificity``, ``fpr``, ``ppv``, ``npv``, ``f1``; plus
        ``threshold@<point>``, and for chosen points ``val_sensitivity@<point>`` and
        ``val_specificity@<point>`` (what the threshold achieved on validation).
    """
    s_val, s_test = _positive_score(p_val, positive_class), _positive_score(p_test, positive_class)
    points = {"0.5": 0.5, "youden": youden_threshold(y_val, s_val, positive_class)}
    for target in targets:
        points[target_name(target)] = threshold_for_sensitivity(y_val, s_val, target, positive_class)
    out: dict[str, float] = {}
    for name, t in points.items():
        out[f"threshold@{name}"] = float(t)
        for metric, value in rates(confusion_at(y_test, s_test, t, positive_class)).items():
            out[f"{metric}@{name}"] = value
        if name != "0.5":
            val = rates(confusion_at(y_val, s_val, t, positive_class))
            out[f"val_sensitivity@{name}"] = val["sensitivity"]
            out[f"val_specificity@{name}"] = val["specificity"]
    return out


def multilabel_metrics(y_true: np.ndarray, probs: np.ndarray, label_names: Sequence[str] | None = None,
                       threshold: float = 0.5) -> dict[str, float]:
    """Metrics of multi-label predictions (ChestMNIST-style: each label is its own binary task).

    Args:
        y_true: [N, L] 0/1 labels.
        probs: [N, L] per-label probabilities (sigmoid outputs).
        label_names: L names for the per-label keys (default ``"0"``, ``"1"``, ...).
        threshold: a label is called present when its probability is ``>= threshold``.

    Returns:
        ``auc/<name>`` for each label with both classes in ``y_true``; ``auc`` their mean (macro);
        ``auc_labels`` how many labels that mean covers and ``auc_skipped`` how many had one class
        only (no AUC defined); ``acc`` the mean over labels of per-label accuracy at ``threshold``;
        ``f1_macro`` the mean over all labels of per-label F1 at ``threshold`` (0 for a label with
        no positives and none called).
    """
    y_true = np.asarray(y_true).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    if y_true.ndim != 2 or y_true.shape != probs.shape:
        raise MedsslError(f"multi-label labels and probs must both be [N, L], got {y_true.shape} "
                          f"and {probs.shape}")
    n_labels = y_true.shape[1]
    names = [str(i) for i in range(n_labels)] if label_names is None else [str(n) for n in label_names]
    if len(names) != n_labels:
        raise MedsslError(f"{len(names)} label names for {n_labels} labels")
    out: dict[str, float] = {}
    aucs, accs, f1s = [], [], []
    for j, name in enumerate(names):
        y, p = y_true[:, j], probs[:, j]
        if 0 < y.sum() < len(y):
            out[f"auc/{name}"] = float(roc_auc_score(y, p))
            aucs.append(out[f"auc/{name}"])
        c = confusion_at(y, p, threshold)
        accs.append(_ratio(c.tp + c.tn, len(y)))
        f1s.append(rates(c)["f1"])
    if not aucs:
        raise MedsslError(f"no AUC: none of the {n_labels} labels has both classes in y_true")
    out.update(auc=float(np.mean(aucs)), auc_labels=len(aucs), auc_skipped=n_labels - len(aucs),
               acc=float(np.mean(accs)),
               f1_macro=float(np.mean(f1s)))
    return out
