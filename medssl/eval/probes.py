"""Frozen-feature protocols: kNN and linear probe on an encoder's pooled features."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler
from torch import nn

from medssl.eval.metrics import classification_metrics


@torch.no_grad()
def extract_features(backbone: nn.Module, images: torch.Tensor, batch_size: int = 256,
                     precision: torch.dtype | None = None) -> np.ndarray:
    """uint8 [N, C, *S] -> float32 [N, F] pooled features, in eval mode."""
    backbone.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].float().div_(255)
        with torch.autocast("cpu", dtype=precision or torch.float32, enabled=precision is not None):
            out.append(backbone(x).float())
    return torch.cat(out).numpy()


def _full_probs(probs: np.ndarray, classes: np.ndarray, num_classes: int) -> np.ndarray:
    """sklearn returns columns only for classes seen in training; put them in their places."""
    full = np.zeros((len(probs), num_classes))
    full[:, classes.astype(int)] = probs
    return full


def knn_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
              num_classes: int, k: int = 20, positive_class: int = 1) -> dict[str, float]:
    """Distance-weighted cosine kNN (Wu et al. 2018 protocol) on frozen features."""
    knn = KNeighborsClassifier(n_neighbors=min(k, len(train_x)), metric="cosine", weights="distance")
    knn.fit(train_x, train_y)
    probs = _full_probs(knn.predict_proba(test_x), knn.classes_, num_classes)
    return classification_metrics(test_y, probs, positive_class)


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                 test_x: np.ndarray, test_y: np.ndarray, num_classes: int,
                 positive_class: int = 1) -> dict[str, float]:
    """Logistic regression on standardised features; C chosen by validation AUC."""
    scaler = StandardScaler().fit(train_x)
    tr, va, te = (scaler.transform(a) for a in (train_x, val_x, test_x))
    best, best_auc = None, -1.0
    for c in (0.001, 0.01, 0.1, 1.0):
        clf = LogisticRegression(C=c, max_iter=2000).fit(tr, train_y)
        probs = _full_probs(clf.predict_proba(va), clf.classes_, num_classes)
        auc = classification_metrics(val_y, probs, positive_class)["auc"]
        if auc > best_auc:
            best, best_auc = clf, auc
    probs = _full_probs(best.predict_proba(te), best.classes_, num_classes)
    return {**classification_metrics(test_y, probs, positive_class), "C": float(best.C)}
