"""The fine-tuning recipe: LP-FT's head is the fitted linear probe exactly, layer-wise learning-rate
scales by hand, and early stopping ends training where the patience says (2D and 3D backbones)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from medssl.config import FinetuneConfig
from medssl.data.loaders import TensorBatches
from medssl.engine import fit, seed_everything
from medssl.engine.trainer import make_optimizer
from medssl.eval import finetune as finetune_module
from medssl.eval.finetune import Classifier, layer_lr_scales, predict_proba
from medssl.eval.probes import extract_features, fit_linear_probe
from medssl.registry import create_backbone


def _features(n, dims, classes, rng):
    y = np.arange(n) % classes
    x = rng.normal(size=(n, dims)) * rng.uniform(0.1, 10, dims) + rng.normal(size=dims) * 5
    x[:, 0] += 3 * y  # feature 0 tells the class apart, on scaled and shifted features
    return x, y


@pytest.mark.parametrize("num_classes,seen", [(2, 2), (4, 4), (5, 3)])
def test_probe_head_gives_the_probe_probabilities(num_classes, seen):
    """softmax(W x + b) of the folded head equals the sklearn probe's probabilities, also when the
    training subset lacks classes (their probability is ~0, as the probe's zero column)."""
    rng = np.random.default_rng(num_classes)
    x, y = _features(60, 7, seen, rng)
    xv, yv = _features(30, 7, seen, rng)
    probe = fit_linear_probe(x, y, xv, yv, num_classes, positive_class=1)
    weight, bias = probe.head()
    test = rng.normal(size=(11, 7)) * 3
    got = torch.softmax(torch.from_numpy(test).float() @ weight.T + bias, 1).numpy()
    assert got.shape == (11, num_classes)
    assert got == pytest.approx(probe.predict(test), abs=1e-5)


def test_probe_head_multilabel_gives_per_label_sigmoids():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, 5)) * 4 + 2
    y = np.stack([x[:, 0] > 2, x[:, 1] + x[:, 2] > 4, np.zeros(80, bool)], 1).astype(int)  # label 2: never
    probe = fit_linear_probe(x, y, x, y, 3, multi_label=True)
    weight, bias = probe.head()
    got = torch.sigmoid(torch.from_numpy(x[:9]).float() @ weight.T + bias).numpy()
    assert got == pytest.approx(probe.predict(x[:9]), abs=1e-5)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_lp_ft_starts_from_the_linear_probe(spatial_dims):
    """A classifier whose head is set from the probe predicts, on images, what the probe predicts
    on the encoder's features: LP-FT's fine-tuning starts at the linear probe."""
    seed_everything(0)
    backbone = create_backbone("resnet18_small", spatial_dims, 1, width=0.125)
    images = torch.randint(0, 256, (40, 1, *[12] * spatial_dims), dtype=torch.uint8)
    labels = torch.arange(40) % 3
    feats = extract_features(backbone, images)
    probe = fit_linear_probe(feats[:30], labels[:30].numpy(), feats[30:], labels[30:].numpy(), 3)
    model = Classifier(backbone, 3)
    model.set_head(*probe.head())
    assert predict_proba(model, images) == pytest.approx(probe.predict(feats), abs=1e-4)


@pytest.mark.parametrize("name,spatial_dims,depth", [("resnet18_small", 2, 5), ("resnet10", 3, 5),
                                                      ("vit_tiny", 2, 8)])
def test_layer_decay_scales_by_hand(name, spatial_dims, depth):
    """Head at lr; backbone group i of L (input first) at lr x scale x decay^(L - i); every
    parameter in exactly one group, so the optimizer accepts it."""
    backbone = create_backbone(name, spatial_dims, 1, width=0.25)
    model = Classifier(backbone, 2, encoder_lr_scale=0.5, layer_decay=0.8)
    groups = model.param_groups()
    assert [g["lr_scale"] for g in groups] == pytest.approx(
        [1.0] + [0.5 * 0.8 ** (depth - i) for i in range(depth)])
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    opt = make_optimizer(model, SimpleNamespace(optimizer="adamw", lr=1.0, weight_decay=0.0))
    stem = next(iter(layer_lr_scales(backbone)[0]["params"]))
    scale = {id(p): g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    assert scale[id(model.head.weight)] == 1.0 and scale[id(stem)] == pytest.approx(0.5 * 0.8 ** depth)


def test_scale_one_and_no_decay_is_plain_fine_tuning():
    model = Classifier(create_backbone("resnet18_small", 2, 1, width=0.125), 2)
    assert all(g["lr_scale"] == 1.0 for g in model.param_groups())


class Counter(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def training_step(self, batch):
        return {"loss": (self.w * batch["image"].float().mean()).square()}


def test_fit_stops_after_the_epoch_whose_callback_says_stop(tmp_path):
    data = TensorBatches(torch.zeros(8, 1, 2, 2, dtype=torch.uint8), None, 4, 0, drop_last=False)
    spec = SimpleNamespace(epochs=10, optimizer="sgd", lr=0.1, weight_decay=0.0, warmup_epochs=0)
    result = fit(Counter(), data, spec, tmp_path, checkpoint=False,
                 on_epoch_end=lambda e: {"val": e, "stop": e == 2})
    assert result.steps == 3 * 2  # epochs 0, 1, 2 of 2 steps each; 10 planned
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    val = [r for r in rows if "val" in r]
    assert [r["val"] for r in val] == [0, 1, 2] and val[-1]["early_stop"] and "stop" not in val[0]


@pytest.mark.parametrize("patience,epochs_run", [(0.0, 8), (0.25, 4), (0.5, 6)])
def test_finetune_patience_is_a_share_of_the_planned_steps(monkeypatch, tmp_path, patience, epochs_run):
    """Validation AUC best at epoch 0 and never better: with 8 planned epochs and patience p,
    the run stops at the first epoch more than p x 8 epochs past the best (0: never)."""
    seen = []

    def fake_fit(net, data, spec, run_dir, *, on_epoch_end, **kw):
        for epoch in range(spec.epochs):
            with torch.no_grad():  # epoch 0 separates the validation classes, later ones do not
                net.head.weight.copy_(torch.tensor([[0.0, 0.0], [20.0 if epoch == 0 else 0.0, 0.0]]))
            seen.append(epoch)
            if on_epoch_end(epoch)["stop"]:
                break
        return SimpleNamespace(seconds=1.0, steps=len(seen), images_per_second=1.0)

    monkeypatch.setattr(finetune_module, "fit", fake_fit)
    x = torch.tensor([[10, 250], [20, 200], [200, 20], [250, 10]], dtype=torch.uint8).reshape(4, 1, 1, 2)
    y = torch.tensor([0, 0, 1, 1])
    model = Classifier(FirstTwo(), 2)
    spec = FinetuneConfig(epochs=8, batch_size=4, patience=patience)
    out, _, _ = finetune_module.finetune(model, (x, y), (x, y), (x, y), spec, tmp_path, 0)
    assert len(seen) == epochs_run and out["best_epoch"] == 0


class FirstTwo(torch.nn.Module):
    num_features = 2

    def forward(self, x):
        return x.flatten(1)[:, :2]


@pytest.mark.parametrize("select_start,best_epoch", [(True, -1), (False, 0)])
def test_lp_ft_keeps_the_probe_when_no_epoch_beats_it_on_validation(monkeypatch, tmp_path, select_start,
                                                                     best_epoch):
    """The starting model (the probe's head) separates the validation classes; every trained epoch
    is worse. With select_start it is the kept model (best_epoch -1), else the best trained epoch."""
    def fake_fit(net, data, spec, run_dir, *, on_epoch_end, **kw):
        for epoch in range(3):
            with torch.no_grad():  # "forgetting": epoch 0 reads feature 1, later ones nothing
                net.head.weight.copy_(torch.tensor([[0.0, 0.0], [0.0, 0.5 if epoch == 0 else 0.0]]))
            on_epoch_end(epoch)
        return SimpleNamespace(seconds=1.0, steps=3, images_per_second=1.0)

    monkeypatch.setattr(finetune_module, "fit", fake_fit)
    # feature 0 separates the classes (AUC 1), feature 1 does not (AUC 0.5)
    x = torch.tensor([[10, 250], [100, 10], [150, 200], [250, 20]], dtype=torch.uint8).reshape(4, 1, 1, 2)
    y = torch.tensor([0, 0, 1, 1])
    model = Classifier(FirstTwo(), 2)
    model.set_head(torch.tensor([[0.0, 0.0], [20.0, 0.0]]), torch.tensor([0.0, -10.0]))
    out, _, _ = finetune_module.finetune(model, (x, y), (x, y), (x, y),
                                         FinetuneConfig(epochs=3, batch_size=4), tmp_path, 0,
                                         select_start=select_start)
    assert out["best_epoch"] == best_epoch
    assert model.head.weight[1].tolist() == ([20.0, 0.0] if select_start else [0.0, 0.5])
