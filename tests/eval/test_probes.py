"""Frozen-feature kNN vote against a naive loop and hand values; linear-probe C and fine-tune epoch
selected on validation only, and the selected model is the one tested."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler
from torch import nn

from medssl.engine.checkpoint import load_weights
from medssl.eval import finetune as finetune_module
from medssl.eval.finetune import Classifier
from medssl.eval.probes import knn_probe, knn_vote, linear_probe, reestimate_bn
from medssl.registry import create_backbone


def naive_vote(train_x, train_y, test_x, num_classes, k, temperature):
    """Wu et al. 2018 by loops: cosine similarity to every training row, the k largest vote
    exp(sim / temperature) for their class, votes normalised per test row."""
    out = []
    for t in test_x:
        sims = [sum(a * b for a, b in zip(t, r, strict=True)) /
                (math.sqrt(sum(a * a for a in t)) * math.sqrt(sum(b * b for b in r))) for r in train_x]
        top = sorted(range(len(sims)), key=lambda i: -sims[i])[:k]
        votes = [0.0] * num_classes
        for i in top:
            votes[int(train_y[i])] += math.exp(sims[i] / temperature)
        out.append([v / sum(votes) for v in votes])
    return np.array(out)


@pytest.mark.parametrize("k,temperature", [(1, 0.07), (5, 0.07), (7, 0.5), (40, 0.1)])
def test_knn_vote_matches_a_naive_loop(k, temperature):
    rng = np.random.default_rng(0)
    train_x, train_y = rng.normal(size=(30, 6)) * rng.uniform(0.1, 5, (30, 1)), rng.integers(0, 3, 30)
    test_x = rng.normal(size=(9, 6))
    got = knn_vote(train_x, train_y, test_x, 3, k, temperature, chunk=4)  # chunks of 4 test rows
    assert got == pytest.approx(naive_vote(train_x, train_y, test_x, 3, k, temperature), abs=1e-9)


def test_knn_vote_hand_values():
    train_x, train_y = np.array([[2.0, 0.0], [0.0, 3.0], [-1.0, -1.0]]), np.array([0, 1, 1])
    test_x = np.array([[1.0, 0.0], [1.0, 1.0]])
    probs = knn_vote(train_x, train_y, test_x, 2, k=2, temperature=0.07)
    # row 0: sims 1 (class 0) and 0 (class 1); row 1: both 1/sqrt(2); the third row is never a top-2
    p1 = 1 / (1 + math.exp(1 / 0.07))
    assert probs == pytest.approx(np.array([[1 - p1, p1], [0.5, 0.5]]), abs=1e-12)
    metrics = knn_probe(train_x, train_y, np.array([[1.0, 0.1], [0.1, 1.0]]), np.array([0, 1]), 2, 1)
    assert metrics["auc"] == 1.0 and metrics["acc"] == 1.0


def test_linear_probe_picks_c_on_validation_and_tests_that_model():
    rng = np.random.default_rng(3)
    w = rng.normal(size=20)
    x = rng.normal(size=(120, 20))
    y = (x @ w + rng.normal(scale=4.0, size=120) > 0).astype(int)
    train_x, train_y, val_x, val_y = x[:60], y[:60], x[60:], y[60:]
    test_x, test_y = val_x, 1 - val_y  # the test set ranks every C the other way round
    scaler = StandardScaler().fit(train_x)
    val_auc, test_auc = {}, {}
    for c in (0.001, 0.01, 0.1, 1.0):
        clf = LogisticRegression(C=c, max_iter=2000).fit(scaler.transform(train_x), train_y)
        val_auc[c] = roc_auc_score(val_y, clf.predict_proba(scaler.transform(val_x))[:, 1])
        test_auc[c] = roc_auc_score(test_y, clf.predict_proba(scaler.transform(test_x))[:, 1])
    assert len(set(val_auc.values())) == 4  # the choice matters
    best = max(val_auc, key=val_auc.get)
    assert best != max(test_auc, key=test_auc.get)
    out = linear_probe(train_x, train_y, val_x, val_y, test_x, test_y, 2)
    assert out["C"] == best and out["auc"] == pytest.approx(test_auc[best])


class FirstTwo(nn.Module):
    """A 'backbone' whose features are the first two input values."""

    num_features = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :2]


def _images(f0, f1):
    return torch.tensor(np.stack([f0, f1], 1), dtype=torch.uint8).reshape(-1, 1, 1, 2)


def test_finetune_keeps_the_best_validation_epoch_and_tests_that_checkpoint(monkeypatch, tmp_path):
    labels = torch.tensor([0, 0, 1, 1])
    val = (_images([10, 20, 200, 250], [250, 200, 20, 10]), labels)  # feature 0 tells the class
    test = (_images([250, 200, 20, 10], [10, 20, 200, 250]), labels)  # feature 1 tells the class
    model = Classifier(FirstTwo(), 2)
    # the class-1 logit minus the class-0 logit per epoch: flat, feature 0, feature 1, -feature 0
    heads = [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (-1.0, 0.0)]

    def fake_fit(net, data, spec, run_dir, *, on_epoch_end, **kw):
        logs = []
        for epoch, (a, b) in enumerate(heads):  # "training" sets the head; selection sees each epoch
            with torch.no_grad():
                net.head.weight.copy_(torch.tensor([[0.0, 0.0], [a, b]]) * 20)
                net.head.bias.copy_(torch.tensor([0.0, -10.0]))  # threshold at 0.5
            logs.append(on_epoch_end(epoch))
        assert [round(v["val_auc"], 6) for v in logs] == [0.5, 1.0, 0.0, 0.0]
        return SimpleNamespace(seconds=1.0, steps=len(heads), images_per_second=4.0)

    monkeypatch.setattr(finetune_module, "fit", fake_fit)
    out, p_val, p_test = finetune_module.finetune(model, val, val, test, SimpleNamespace(batch_size=2),
                                                  tmp_path, 0)
    assert out["best_epoch"] == 1 and out["val_auc"] == 1.0  # not epoch 2 (best on test) or 3 (last)
    assert out["auc"] == 0.0 and out["acc"] == 0.0  # epoch 1's head on the test set, by hand
    assert p_val.shape == p_test.shape == (len(test[0]), 2) and np.allclose(p_test.sum(1), 1)
    assert torch.equal(model.head.weight, torch.tensor([[0.0, 0.0], [20.0, 0.0]]))
    assert torch.equal(load_weights(tmp_path / "model.safetensors")["head.weight"], model.head.weight)


@pytest.mark.parametrize("name,dims,size", [("resnet18_small", 2, 16), ("resnet10", 3, 16)])
def test_reestimate_bn_gives_the_statistics_of_the_images_themselves(name, dims, size):
    """Each BatchNorm's running mean/var become the average over batches of its input's batch mean
    and unbiased variance (recorded with hooks on a naive train-mode pass); the original is untouched."""
    backbone = create_backbone(name, dims, 1, width=0.125)
    bns = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:  # statistics from "somewhere else" (e.g. tiles)
        bn.running_mean.fill_(3.0), bn.running_var.fill_(7.0)
    images = torch.randint(0, 256, (10, 1, *[size] * dims), generator=torch.Generator().manual_seed(0),
                           dtype=torch.uint8)
    new = reestimate_bn(backbone, images, batch_size=4)  # 3 batches: 4, 4, 2
    ref = copy.deepcopy(backbone).train()  # train mode: later layers see what update_bn's passes saw
    ref_bns = [m for m in ref.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    inputs: dict[int, list[torch.Tensor]] = {}
    for i, bn in enumerate(ref_bns):
        bn.register_forward_pre_hook(lambda m, a, i=i: inputs.setdefault(i, []).append(a[0].detach()))
    with torch.no_grad():
        for start in range(0, 10, 4):
            ref(images[start:start + 4].float() / 255)
    new_bns = [m for m in new.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for i, new_bn in enumerate(new_bns):
        channels_first = [x.transpose(0, 1).flatten(1) for x in inputs[i]]
        assert len(channels_first) == 3
        mean = sum(c.mean(1) for c in channels_first) / 3
        var = sum(c.var(1, unbiased=True) for c in channels_first) / 3
        torch.testing.assert_close(new_bn.running_mean, mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(new_bn.running_var, var, rtol=1e-4, atol=1e-5)
    assert all(float(bn.running_mean[0]) == 3.0 for bn in bns) and not new.training


@pytest.mark.parametrize("k", [1, 5, 29, 40])
def test_leave_one_out_vote_is_the_vote_of_the_other_rows(k):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(30, 6)), rng.integers(0, 3, 30)
    got = knn_vote(x, y, x, 3, k, 0.1, chunk=4, leave_one_out=True)  # chunks of 4: offsets matter
    rest = [np.delete(np.arange(30), i) for i in range(30)]
    want = np.concatenate([naive_vote(x[r], y[r], x[i:i + 1], 3, min(k, 29), 0.1)
                           for i, r in enumerate(rest)])
    assert got == pytest.approx(want, abs=1e-9)
    with pytest.raises(ValueError, match="leave_one_out"):
        knn_vote(x, y, x[:5], 3, k, leave_one_out=True)
