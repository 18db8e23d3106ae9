"""Frozen-feature protocols: weighted kNN vote and linear probe on an encoder's pooled features."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.optim.swa_utils import update_bn

from medssl.engine.precision import autocast, model_device
from medssl.eval.metrics import classification_metrics, multilabel_metrics


@torch.no_grad()
def extract_features(backbone: nn.Module, images: torch.Tensor, batch_size: int = 256,
                     precision: torch.dtype | None = None) -> np.ndarray:
    """uint8 [N, C, *S] -> float32 [N, F] pooled features, in eval mode, on the backbone's device."""
    backbone.eval()
    device, out = model_device(backbone), []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device).float().div_(255)
        with autocast(device, precision):
            out.append(backbone(x).float().cpu())
    return torch.cat(out).numpy()


def reestimate_bn(backbone: nn.Module, images: torch.Tensor, batch_size: int = 256) -> nn.Module:
    """A copy of ``backbone`` whose BatchNorm statistics are recomputed on ``images`` (uint8
    [N, C, *S]) as they are, in eval mode (AdaBN, Li et al. 2016). Pretexts that train the encoder
    on tiles (jigsaw, relative location, Rubik's cube) leave tile statistics that whole images do not
    have. ``torch.optim.swa_utils.update_bn`` does the recomputation (cumulative average)."""
    model, device = copy.deepcopy(backbone), model_device(backbone)
    batches = (images[s:s + batch_size].float().div(255) for s in range(0, len(images), batch_size))
    update_bn(batches, model, device=device)
    return model.eval()


def _full_probs(probs: np.ndarray, classes: np.ndarray, num_classes: int) -> np.ndarray:
    """sklearn returns columns only for classes seen in training; put them in their places."""
    full = np.zeros((len(probs), num_classes))
    full[:, classes.astype(int)] = probs
    return full


def _unit(a: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, float64."""
    a = np.asarray(a, np.float64)
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def knn_vote(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, num_classes: int,
             k: int = 20, temperature: float = 0.07, chunk: int = 1024,
             leave_one_out: bool = False) -> np.ndarray:
    """Temperature-weighted cosine kNN vote (Wu et al., "Unsupervised Feature Learning via
    Non-Parametric Instance Discrimination", CVPR 2018, Sec. 3.4; as in DINO's ``eval_knn``).

    Each of the ``k`` training features most cosine-similar to a test feature votes for its class
    with weight ``exp(sim / temperature)``. train_x [N, F], train_y [N] int, test_x [M, F] ->
    class probabilities [M, num_classes] (votes normalised to sum to 1). ``leave_one_out``:
    ``test_x`` is ``train_x`` and each row's own entry does not vote for it (``k`` <= N - 1).
    """
    tr, te = _unit(train_x), _unit(test_x)
    if leave_one_out and len(te) != len(tr):
        raise ValueError(f"leave_one_out needs test_x = train_x, got {len(te)} and {len(tr)} rows")
    k = min(k, len(tr) - leave_one_out)
    labels = np.asarray(train_y).astype(int)
    probs = np.zeros((len(te), num_classes))
    for start in range(0, len(te), chunk):
        sim = te[start:start + chunk] @ tr.T  # [m, N]
        if leave_one_out:
            own = np.arange(len(sim))
            sim[own, start + own] = -np.inf
        idx = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(sim, idx, axis=1)
        weights = np.exp((top - top.max(axis=1, keepdims=True)) / temperature)  # row scale cancels
        rows = np.repeat(np.arange(len(sim)), k)
        np.add.at(probs[start:start + chunk], (rows, labels[idx].ravel()), weights.ravel())
    return probs / probs.sum(axis=1, keepdims=True)


def knn_vote_multilabel(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, k: int = 20,
                        temperature: float = 0.07, leave_one_out: bool = False) -> np.ndarray:
    """:func:`knn_vote` per label: train_y [N, L] 0/1 -> [M, L], each label's weighted share of
    the ``k`` neighbours that carry it."""
    y = np.asarray(train_y).astype(int)
    votes = [knn_vote(train_x, y[:, j], test_x, 2, k, temperature, leave_one_out=leave_one_out)[:, 1]
             for j in range(y.shape[1])]
    return np.stack(votes, 1)


def knn_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, num_classes: int, k: int = 20,
                multi_label: bool = False, leave_one_out: bool = False) -> np.ndarray:
    """:func:`knn_vote` ([M, num_classes]), or :func:`knn_vote_multilabel` ([M, L]) for multi-label tasks."""
    if multi_label:
        return knn_vote_multilabel(train_x, train_y, test_x, k, leave_one_out=leave_one_out)
    return knn_vote(train_x, train_y, test_x, num_classes, k, leave_one_out=leave_one_out)


def linear_predict(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                   others: list[np.ndarray], num_classes: int, positive_class: int = 1,
                   multi_label: bool = False) -> tuple[np.ndarray, list[np.ndarray], float]:
    """Logistic regression on standardised features, C chosen by validation AUC (one-vs-rest per
    label for multi-label tasks). Returns (val probabilities, probabilities of each of ``others``, C)."""
    probe = fit_linear_probe(train_x, train_y, val_x, val_y, num_classes, positive_class, multi_label)
    return probe.val_probs, [probe.predict(x) for x in others], probe.C


@dataclass
class LinearProbe:
    """A fitted logistic-regression probe on standardised features (``fit_linear_probe``)."""

    clf: Any  # LogisticRegression, or OneVsRestClassifier of them for multi-label tasks
    scaler: StandardScaler
    C: float
    num_classes: int
    multi_label: bool
    val_probs: np.ndarray | None = None  # set by fit_linear_probe for the chosen C

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Features [N, F] -> probabilities [N, K] (columns of classes unseen in training are 0)."""
        p = self.clf.predict_proba(self.scaler.transform(x))
        return p if self.multi_label else _full_probs(p, self.clf.classes_, self.num_classes)

    def head(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The probe as a linear layer on raw features: (weight [K, F], bias [K]) whose softmax
        (sigmoid when multi-label) gives ``predict``'s probabilities; the LP step of LP-FT.

        Standardisation is folded in (w/sigma, b - w.mu/sigma). A binary probe's one logit d is split
        as (-d/2, +d/2), whose softmax is the same sigmoid; classes (labels) absent from the training
        subset get zero weights and a bias of -30 (probability ~0), as ``predict`` gives them.
        """
        mu, sigma = self.scaler.mean_, self.scaler.scale_
        weight = np.zeros((self.num_classes, len(mu)))  # on standardised features, then folded
        bias = np.full(self.num_classes, -30.0)
        if self.multi_label:
            for k, est in enumerate(self.clf.estimators_):
                if hasattr(est, "coef_"):
                    weight[k], bias[k] = est.coef_[0], est.intercept_[0]
                else:  # a label constant in training: sklearn's constant predictor
                    bias[k] = 30.0 if est.predict_proba(np.zeros((1, len(mu))))[0, 1] > 0.5 else -30.0
        else:
            classes = self.clf.classes_.astype(int)
            if len(classes) == 2:
                d_w, d_b = self.clf.coef_[0], self.clf.intercept_[0]
                weight[classes[0]], bias[classes[0]] = -d_w / 2, -d_b / 2
                weight[classes[1]], bias[classes[1]] = d_w / 2, d_b / 2
            else:
                weight[classes], bias[classes] = self.clf.coef_, self.clf.intercept_
        weight = weight / sigma  # rows of absent classes are zero and stay zero
        bias = bias - weight @ mu
        return torch.from_numpy(weight).float(), torch.from_numpy(bias).float()


def fit_linear_probe(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                     num_classes: int, positive_class: int = 1, multi_label: bool = False) -> LinearProbe:
    """Logistic regression on standardised features for C in 1e-3..1, the one with the best
    validation AUC (the smallest C of equal ones)."""
    scaler = StandardScaler().fit(train_x)
    tr = scaler.transform(train_x)
    best = None
    for c in (0.001, 0.01, 0.1, 1.0):
        clf = LogisticRegression(C=c, max_iter=2000)
        clf = (OneVsRestClassifier(clf) if multi_label else clf).fit(tr, train_y)
        probe = LinearProbe(clf, scaler, c, num_classes, multi_label)
        p = probe.predict(val_x)
        auc = multilabel_metrics(val_y, p)["auc"] if multi_label else \
            classification_metrics(val_y, p, positive_class)["auc"]
        if best is None or auc > best[0]:
            probe.val_probs, best = p, (auc, probe)
    return best[1]


def knn_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
              num_classes: int, k: int = 20, positive_class: int = 1,
              temperature: float = 0.07) -> dict[str, float]:
    """Classification metrics of the :func:`knn_vote` (Wu et al. 2018) on frozen features."""
    probs = knn_vote(train_x, train_y, test_x, num_classes, k, temperature)
    return classification_metrics(test_y, probs, positive_class)


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                 test_x: np.ndarray, test_y: np.ndarray, num_classes: int,
                 positive_class: int = 1) -> dict[str, float]:
    """Test metrics of :func:`linear_predict` (logistic regression; C chosen by validation AUC)."""
    _, [probs], c = linear_predict(train_x, train_y, val_x, val_y, [test_x], num_classes, positive_class)
    return {**classification_metrics(test_y, probs, positive_class), "C": c}
