"""The segmentation fine-tuning recipe: decoder warm-up (the pretrained encoder held at learning
rate 0 for a share of the planned steps) and early stopping on validation Dice, 2D and 3D."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_segmentation import ThresholdNet  # tests/eval is on the path (pytest rootdir imports)
from torch import nn

from medssl.data.loaders import TensorBatches
from medssl.engine import fit
from medssl.eval import segmentation
from medssl.eval.segmentation import SegmentationNet
from medssl.models.unet import UNet
from medssl.registry import create_backbone


def _spec(**kw):
    base = dict(epochs=2, batch_size=2, optimizer="adamw", lr=1e-2, weight_decay=1e-4, warmup_epochs=0.0)
    return SimpleNamespace(**{**base, **kw})


def _data(shape, n=4):
    g = torch.Generator().manual_seed(0)
    return (torch.randint(0, 255, (n, 1, *shape), generator=g, dtype=torch.uint8),
            torch.randint(0, 3, (n, *shape), generator=g, dtype=torch.uint8))


def _weights(module: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable tensors only (BatchNorm running statistics move in train mode at any lr)."""
    return {k: v.detach().clone() for k, v in module.named_parameters()}


@pytest.mark.parametrize("dims,shape", [(2, (12, 12)), (3, (8, 8, 8))])
def test_decoder_warmup_holds_the_encoder_exactly_then_lets_it_learn(dims, shape):
    base = UNet(create_backbone("resnet18_small", dims, 1, width=0.125), 3)
    total = 4  # 2 epochs x 2 steps
    moved = {}
    for start in (total, total - 1):
        net = SegmentationNet(copy.deepcopy(base), crop=shape, augment=False)
        net.encoder_start = start
        torch.manual_seed(0)
        fit(net, TensorBatches(*_data(shape), 2, seed=0), _spec(), None)
        enc_before, enc_after = _weights(base.backbone), _weights(net.unet.backbone)
        moved[start] = [k for k in enc_before if not torch.equal(enc_before[k], enc_after[k])]
        dec_before, dec_after = _weights(base.decoder), _weights(net.unet.decoder)
        assert any(not torch.equal(dec_before[k], dec_after[k]) for k in dec_before)
    assert moved[total] == []  # held for every step: bit-identical
    assert len(moved[total - 1]) == len(_weights(base.backbone))  # one step at lr > 0 moves them all


class StillNet(ThresholdNet):
    """``ThresholdNet`` whose loss has zero gradient, so every validation check gives the same Dice."""

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"loss": self.t * 0 + 1}


@pytest.mark.parametrize("shape", [(8, 8), (6, 8, 8)])
@pytest.mark.parametrize("patience,epochs_run", [(0.0, 8), (0.1, 4), (0.25, 6), (0.5, 8)])
def test_segmentation_patience_stops_at_the_hand_computed_check(tmp_path, shape, patience, epochs_run):
    # 8 epochs of 2 steps, checks after epochs 1, 3, 5, 7; the first check stays the best, so a
    # check at epoch e stops when (e - 1) x 2 steps > patience x 16 steps:
    # 0.1 (1.6 steps): epoch 3; 0.25 (4): epoch 5; 0.5 (8): epoch 7, the last anyway; 0: never
    target = np.zeros(shape, np.uint8)
    target[(slice(2, 5),) * len(shape)] = 1
    image = (target * 180 + 20).astype(np.uint8)
    train = (torch.from_numpy(np.stack([image] * 2))[:, None], torch.from_numpy(np.stack([target] * 2)))
    out = segmentation.train_segmentation(StillNet(), train, ([image], [target]),
                                          _spec(epochs=8, batch_size=1, patience=patience), tmp_path,
                                          0, 2, shape, 0.25, val_checks=4)
    assert out["steps"] == epochs_run * 2
    assert out["best_epoch"] == 1 and out["val_dice"] == 1.0


def test_decoder_warmup_share_becomes_steps_of_the_planned_run(tmp_path, monkeypatch):
    def fake_fit(net, data, spec, run_dir, *, on_epoch_end, **kw):
        on_epoch_end(13)  # the last epoch: selection needs one check
        return SimpleNamespace(seconds=0.0, steps=42)

    monkeypatch.setattr(segmentation, "fit", fake_fit)
    net = SegmentationNet(UNet(create_backbone("resnet18_small", 2, 1, width=0.125), 2), crop=(8, 8))
    images, labels = _data((8, 8), n=6)
    labels = labels.clamp(max=1)
    val = ([images[0, 0].numpy()], [labels[0].numpy()])
    # 6 cases, batch 2: 3 steps per epoch; epochs 5 but at least 40 steps -> 14 epochs, 42 steps
    out = segmentation.train_segmentation(net, (images, labels), val, _spec(epochs=5), tmp_path, 0, 2,
                                          (8, 8), 0.25, min_steps=40, decoder_warmup=0.3)
    assert out["encoder_start"] == net.encoder_start == 13  # 0.3 x 42 = 12.6
    groups = net.param_groups()
    assert groups[0].get("start_step", 0) == 0  # the decoder learns from step 0
    assert all(g["start_step"] == 13 for g in groups[1:])


def test_paired_dice_interval_matches_a_hand_computed_t_interval():
    from medssl.report.segmentation import delta_lines, paired_dice, summarise_segmentation

    def row(init, frac, seed, dice):
        return {"protocol": "segmentation", "init": init, "fraction": frac, "seed": seed, "fold": 0,
                "dice_mean": dice}

    rows = [row("ssl", 0.1, s, d) for s, d in enumerate([0.80, 0.78, 0.84])]
    rows += [row("scratch", 0.1, s, d) for s, d in enumerate([0.75, 0.75, 0.77])]
    rows += [row("ssl", 1.0, 0, 0.9), row("scratch", 1.0, 1, 0.9)]  # seeds do not pair: left out
    out = paired_dice(rows)
    assert set(out) == {0.1}
    mean, (lo, hi), n = out[0.1]
    half = 4.302653 * 0.02 / 3 ** 0.5  # differences .05 .03 .07: std .02; t(0.975, 2 df)
    assert n == 3 and mean == pytest.approx(0.05)
    assert (lo, hi) == pytest.approx((0.05 - half, 0.05 + half), abs=1e-6)
    line = delta_lines(summarise_segmentation(rows), rows)[0]
    assert f"{0.05 - half:+.3f}, {0.05 + half:+.3f}]" in line


def test_selection_lines_count_runs_that_kept_the_last_check_and_flag_a_rising_curve(tmp_path):
    from medssl.report.segmentation import selection_lines, write_segmentation_report

    def row(init, seed, curve):
        best = max(curve, key=lambda c: c[1])[0]  # first maximum, as BestEpoch keeps it
        return {"protocol": "segmentation", "init": init, "fraction": 0.1, "seed": seed, "fold": 0,
                "classes": ["a"], "dice_a": 0.8, "dice_mean": 0.8, "seconds": 1.0,
                "best_epoch": best, "val_curve": curve}

    rows = [row("ssl", 0, [[9, 0.70], [19, 0.78], [29, 0.80]]),  # last kept, +.02
            row("ssl", 1, [[9, 0.70], [19, 0.81], [29, 0.80]]),  # middle kept, -.01
            row("ssl", 2, [[9, 0.72], [19, 0.75], [29, 0.82]]),  # last kept, +.07
            row("scratch", 0, [[9, 0.60], [19, 0.70], [29, 0.69]]),  # none kept the last: no hint
            row("scratch", 1, [[9, 0.60], [19, 0.71], [29, 0.65]]),
            {**row("scratch", 2, [[29, 0.5]]), "val_curve": [[29, 0.5]]}]  # one check: left out
    ssl, scratch = selection_lines(rows)
    assert ssl.startswith("- fraction 0.1, ssl: 2 of 3 runs kept the last of 3 validation checks")
    assert "added +0.027 validation Dice" in ssl and "longer fine-tuning" in ssl  # (.02 - .01 + .07) / 3
    assert scratch.startswith("- fraction 0.1, scratch: 0 of 2 runs") and "-0.035" in scratch
    assert "longer fine-tuning" not in scratch and "flat" not in scratch
    flat = [row("ssl", s, [[9, 0.7], [19, 0.80], [29, 0.80 + d]]) for s, d in enumerate([0.002, 0.004])]
    [line] = selection_lines(flat)  # both kept the last check, +.003 < RISING: converged, not step-limited
    assert "2 of 2 runs" in line and "+0.003" in line and "flat at the end" in line
    assert "longer fine-tuning" not in line
    text = write_segmentation_report(tmp_path, rows).read_text()
    assert "## Model selection (validation Dice)" in text and ssl in text
