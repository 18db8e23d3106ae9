"""Classification metrics clinicians ask for, computed with scikit-learn."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, roc_auc_score


def classification_metrics(y_true: np.ndarray, probs: np.ndarray,
                           positive_class: int = 1) -> dict[str, float]:
    """AUC and accuracy; for binary tasks also sensitivity, specificity and FPR at 0.5.

    Args:
        y_true: [N] integer labels.
        probs: [N, K] class probabilities (rows sum to 1).
        positive_class: for K == 2, the class counted as "positive" (e.g. 0 = malignant).

    Returns:
        ``auc`` (binary, or macro one-vs-rest for K > 2), ``acc``, ``balanced_acc`` and, for
        binary tasks, ``sensitivity``, ``specificity``, ``fpr``.
    """
    y_true = np.asarray(y_true).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    k = probs.shape[1]
    pred = probs.argmax(1)
    out = {"acc": accuracy_score(y_true, pred), "balanced_acc": balanced_accuracy_score(y_true, pred)}
    if k == 2:
        score = probs[:, positive_class]
        is_pos = y_true == positive_class
        out["auc"] = roc_auc_score(is_pos, score)
        called = score >= 0.5
        tn, fp, fn, tp = confusion_matrix(is_pos, called, labels=[False, True]).ravel()
        out["sensitivity"] = tp / max(tp + fn, 1)
        out["specificity"] = tn / max(tn + fp, 1)
        out["fpr"] = fp / max(fp + tn, 1)
    else:
        out["auc"] = roc_auc_score(y_true, probs, multi_class="ovr", average="macro",
                                   labels=list(range(k)))
    return {name: float(v) for name, v in out.items()}
