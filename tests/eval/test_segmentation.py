"""Segmentation metrics against hand-computed values, patch sampling, sliding-window inference,
encoder/decoder loading and the encoder options (freeze, lower learning rate)."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from medssl.data.loaders import TensorBatches
from medssl.engine import fit
from medssl.engine.checkpoint import load_weights, save_weights
from medssl.errors import MedsslError
from medssl.eval.segmentation import (
    SegmentationNet,
    case_metrics,
    evaluate,
    load_pretrained,
    predict_case,
    random_flips,
    random_patches,
)
from medssl.models.unet import UNet
from medssl.registry import create_backbone


def test_dice_and_iou_match_hand_computed_values():
    target = np.zeros((4, 4), np.uint8)
    target[0, :4] = 1  # 4 px of class 1
    pred = np.zeros((4, 4), np.uint8)
    pred[0, 1:4] = 1
    pred[1, 0:3] = 1  # 6 px, 3 of them right
    m = case_metrics(pred, target, num_classes=3)
    assert m["dice"][0] == pytest.approx(2 * 3 / (4 + 6))
    assert m["iou"][0] == pytest.approx(3 / 7)
    assert np.isnan(m["dice"][1]) and np.isnan(m["iou"][1]) and np.isnan(m["hd95"][1])  # absent


def test_hd95_of_a_shifted_square_scales_with_spacing():
    target = np.zeros((12, 12), np.uint8)
    target[3:7, 3:7] = 1
    pred = np.roll(target, 1, axis=0)
    assert case_metrics(pred, target, 2)["hd95"][0] == pytest.approx(1.0)
    assert case_metrics(pred, target, 2, spacing=(2.0, 1.0))["hd95"][0] == pytest.approx(2.0)
    assert case_metrics(target, target, 2)["hd95"][0] == 0.0


def test_missed_structure_scores_zero_dice_and_the_diagonal_hd95():
    target = np.zeros((3, 4), np.uint8)
    target[1, 1] = 1
    m = case_metrics(np.zeros_like(target), target, 2, spacing=(1.0, 1.0))
    assert m["dice"][0] == 0 and m["hd95"][0] == pytest.approx(5.0)  # sqrt(3^2 + 4^2)


def test_a_false_positive_scores_zero_dice_and_iou_and_the_diagonal_hd95():
    target = np.zeros((3, 4), np.uint8)
    target[0, 0] = 1  # class 1 right; class 2 only in the prediction; class 3 in neither
    pred = target.copy()
    pred[2, 3] = 2
    m = case_metrics(pred, target, 4, spacing=(1.0, 1.0))
    assert list(m["dice"][:2]) == [1.0, 0.0] and list(m["iou"][:2]) == [1.0, 0.0]
    assert m["hd95"][:2] == pytest.approx([0.0, 5.0])
    assert all(np.isnan(m[k][2]) for k in ("dice", "iou", "hd95"))  # empty-empty: NaN everywhere


def test_3d_dice_iou_hd95_match_hand_computed_values():
    target = np.zeros((8, 8, 8), np.uint8)
    target[2:6, 2:6, 2:6] = 1  # 64 voxels
    pred = np.roll(target, 1, axis=0)  # 48 of them overlap
    pred[0, 0, 0] = 2  # a false positive of class 2
    m = case_metrics(pred, target, 3, spacing=(2.5, 1.0, 1.0))
    assert m["dice"] == pytest.approx([2 * 48 / 128, 0.0])
    assert m["iou"] == pytest.approx([48 / 80, 0.0])
    # 16 of the 56 surface voxels on either side are one slice (2.5 mm) off, the rest 0: 95th pct = 2.5
    assert m["hd95"] == pytest.approx([2.5, np.sqrt(20 ** 2 + 8 ** 2 + 8 ** 2)])
    empty = case_metrics(np.zeros_like(target), np.zeros_like(target), 2)
    assert all(np.isnan(empty[k][0]) for k in ("dice", "iou", "hd95"))


def test_case_means_count_false_positives_and_skip_empty_empty_cases():
    target = np.zeros((8, 8), np.uint8)
    target[2:6, 2:6] = 1
    hit = (target * 200 + 20).astype(np.uint8)  # Threshold finds the square exactly
    spurious = np.full((8, 8), 20, np.uint8)
    spurious[0, 0] = 200  # Threshold predicts one foreground pixel on an empty target
    blank = np.full((8, 8), 20, np.uint8)
    empty = np.zeros_like(target)
    means = evaluate(Threshold(), [hit, spurious], [target, empty], 2, (8, 8), 0.25)[0]
    assert means["dice"][0] == 0.5 and means["iou"][0] == 0.5  # (1 + 0) / 2
    means = evaluate(Threshold(), [hit, blank], [target, empty], 2, (8, 8), 0.25)[0]
    assert means["dice"][0] == 1.0 and means["hd95"][0] == 0.0  # the empty-empty case is left out


def test_the_report_states_the_empty_class_rule(tmp_path):
    from medssl.report.segmentation import write_segmentation_report
    row = {"protocol": "segmentation", "init": "ssl", "fraction": 1.0, "fold": 0, "seed": 0,
           "classes": ["a"], "dice_a": 0.5, "dice_mean": 0.5, "seconds": 1.0}
    text = write_segmentation_report(tmp_path, [row]).read_text()
    assert "false positive) scores Dice 0" in text and "in neither is NaN" in text


def test_random_patches_keep_image_and_mask_aligned_and_pad_small_cases():
    x = torch.arange(2 * 10 * 12, dtype=torch.float32).reshape(2, 1, 10, 12)
    y = x[:, 0].long()
    px, py = random_patches(x, y, (4, 5))
    assert px.shape == (2, 1, 4, 5) and py.shape == (2, 4, 5)
    assert torch.equal(px[:, 0].long(), py)
    small_x, small_y = random_patches(x[:, :, :3, :3], y[:, :3, :3], (6, 6))
    assert small_x.shape == (2, 1, 6, 6) and small_y.shape == (2, 6, 6)


def test_random_flips_flip_image_and_mask_together():
    x = torch.rand(8, 1, 5, 6, 7)
    y = (x[:, 0] * 100).long()
    fx, fy = random_flips(x, y)
    assert torch.equal((fx[:, 0] * 100).long(), fy) and not torch.equal(fx, x)


class Threshold(nn.Module):
    """A perfect 'model' for bright structures: logits of (x > 0.5)."""

    def forward(self, x):
        fg = (x > 0.5).float()
        return torch.cat([1 - fg, fg], 1) * 10


@pytest.mark.parametrize("shape,roi", [((20, 17, 9), (8, 8, 8)), ((6, 5, 4), (8, 8, 8)),
                                       ((40, 33), (16, 16))])
def test_sliding_window_prediction_covers_the_native_shape(shape, roi):
    target = np.zeros(shape, np.uint8)
    target[tuple(slice(1, n - 1) for n in shape)] = 1
    image = (target * 200 + 20).astype(np.uint8)
    pred = predict_case(Threshold(), image, roi, overlap=0.25)
    assert pred.shape == shape and np.array_equal(pred, target)
    means, kept = evaluate(Threshold(), [image], [target], 2, roi, 0.25, keep=1)
    assert means["dice"][0] == 1.0 and means["iou"][0] == 1.0 and means["hd95"][0] == 0.0
    assert len(kept) == 1


def _unet(dims=3, width=0.125, out=3):
    return UNet(create_backbone("resnet18_small", dims, 1, width=width), out)


def test_encoder_weights_from_a_pretraining_checkpoint_land_in_the_unet(tmp_path):
    encoder = create_backbone("resnet18_small", 3, 1, width=0.125)
    with torch.no_grad():
        for p in encoder.parameters():
            p.normal_()
    save_weights(encoder, tmp_path / "encoder.safetensors")  # what study.pretrain writes
    unet = _unet()
    report = load_pretrained(unet, load_weights(tmp_path / "encoder.safetensors"))
    assert len(report["encoder_loaded"]) == len(encoder.state_dict())
    for key, value in encoder.state_dict().items():
        assert torch.equal(unet.backbone.state_dict()[key], value), key


def test_decoder_loads_by_key_suffix_from_a_restorative_checkpoint(tmp_path):
    restorer = nn.Module()
    restorer.net = _unet(out=1)  # e.g. a restorative pretext task: U-Net with a 1-channel head
    with torch.no_grad():
        for p in restorer.parameters():
            p.uniform_()
    save_weights(restorer, tmp_path / "checkpoint.safetensors")
    unet = _unet(out=3)
    report = load_pretrained(unet, restorer.net.backbone.state_dict(),
                             load_weights(tmp_path / "checkpoint.safetensors"))
    assert report["decoder_loaded"] and all(k.startswith("decoder.") for k in report["decoder_loaded"])
    assert set(report["decoder_missing"]) == {"head.weight", "head.bias"}  # 1 vs 3 output channels
    key = report["decoder_loaded"][0]
    assert torch.equal(unet.state_dict()[key], restorer.net.state_dict()[key])


def test_encoder_of_another_width_is_a_clear_error():
    other = create_backbone("resnet18_small", 3, 1, width=0.25).state_dict()
    with pytest.raises(MedsslError, match="does not fit backbone"):
        load_pretrained(_unet(), other)


def test_a_whole_pretext_checkpoint_given_as_the_encoder_names_the_file_to_pass(tmp_path):
    """pretrain.checkpoint = a pretraining's checkpoint.safetensors for a U-Net study: the encoder's
    tensors sit under a prefix; the error says to pass encoder.safetensors (which then loads)."""
    pretext = nn.Module()
    pretext.net = _unet(out=1)
    save_weights(pretext, tmp_path / "checkpoint.safetensors")
    save_weights(pretext.net.backbone, tmp_path / "encoder.safetensors")
    with pytest.raises(MedsslError, match=r"whole pretraining checkpoint.*encoder\.safetensors"):
        load_pretrained(_unet(), load_weights(tmp_path / "checkpoint.safetensors"))
    report = load_pretrained(_unet(), load_weights(tmp_path / "encoder.safetensors"))
    assert report["encoder_loaded"] == sorted(pretext.net.backbone.state_dict())


SPEC = SimpleNamespace(epochs=1, batch_size=2, optimizer="adamw", lr=1e-2, weight_decay=1e-4,
                       warmup_epochs=0.0)


def _batch_data(n=2, shape=(12, 12, 12)):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 255, (n, 1, *shape), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 3, (n, *shape), generator=g, dtype=torch.uint8)
    return images, labels


def test_training_step_gives_a_finite_dice_ce_loss_and_gradients():
    net = SegmentationNet(_unet(), crop=(8, 8, 8))
    images, labels = _batch_data()
    loss = net.training_step({"image": images.float() / 255, "label": labels})["loss"]
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in net.parameters())


def test_frozen_encoder_does_not_change_and_stays_in_eval_mode():
    net = SegmentationNet(_unet(), crop=(8, 8, 8), freeze_encoder=True)
    before = copy.deepcopy(net.unet.state_dict())
    fit(net, TensorBatches(*_batch_data(), SPEC.batch_size, seed=0), SPEC, None)
    after = net.unet.state_dict()
    assert not net.unet.backbone.training
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("backbone."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))


def test_encoder_lr_scale_scales_the_encoder_step_exactly():
    base = _unet()
    steps = {}
    for scale in (1.0, 0.25):
        net = SegmentationNet(copy.deepcopy(base), crop=(8, 8, 8), augment=False, encoder_lr_scale=scale)
        torch.manual_seed(0)
        fit(net, TensorBatches(*_batch_data(), SPEC.batch_size, seed=0), SPEC, None)
        steps[scale] = {k: v - base.state_dict()[k] for k, v in net.unet.state_dict().items()
                        if v.is_floating_point()}
    for key, full in steps[1.0].items():
        expected = full * 0.25 if key.startswith("backbone.") and "running" not in key else full
        assert torch.allclose(steps[0.25][key], expected, atol=1e-6), key


@pytest.mark.parametrize("shape", [(20, 24), (10, 12, 14)])
def test_overlay_png_is_written_for_2d_and_3d(tmp_path, shape):
    from PIL import Image

    from medssl.report.overlays import save_overlay

    image = np.random.default_rng(0).integers(0, 255, shape).astype(np.uint8)
    target = np.zeros(shape, np.uint8)
    target[tuple(slice(2, 6) for _ in shape)] = 2
    path = save_overlay(image, target, np.roll(target, 1, 0), tmp_path / "o.png", 3, "case")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > 100


class ThresholdNet(nn.Module):
    """A one-parameter 'segmentation net': foreground where the image exceeds ``t``."""

    def __init__(self) -> None:
        super().__init__()
        self.t = nn.Parameter(torch.tensor(0.5))

    @property
    def core(self) -> nn.Module:
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fg = (x > self.t).float()
        return torch.cat([1 - fg, fg], 1) * 10


def test_train_segmentation_keeps_the_best_validation_epoch(monkeypatch, tmp_path):
    from medssl.eval import segmentation

    target = np.zeros((8, 8), np.uint8)
    target[2:6, 2:6] = 1
    image = (target * 180 + 20).astype(np.uint8)  # 20 outside, 200 inside
    thresholds = [0.05, 0.5, 0.9, 0.05]  # all foreground, exact, nothing, all foreground (the last)
    dice_all = 2 * 16 / (16 + 64)

    def fake_fit(net, data, spec, run_dir, *, on_epoch_end, **kw):
        logs = []
        for epoch, t in enumerate(thresholds):
            with torch.no_grad():
                net.t.fill_(t)
            logs.append(on_epoch_end(epoch))
        assert [v["val_dice"] for v in logs] == pytest.approx([dice_all, 1.0, 0.0, dice_all])
        return SimpleNamespace(seconds=1.0, steps=4)

    monkeypatch.setattr(segmentation, "fit", fake_fit)
    net = ThresholdNet()
    spec = SimpleNamespace(epochs=len(thresholds), batch_size=1)
    train = (torch.from_numpy(image).expand(3, 1, 8, 8), torch.from_numpy(target).expand(3, 8, 8))
    out = segmentation.train_segmentation(net, train, ([image], [target]), spec, tmp_path, 0, 2, (8, 8),
                                          0.25, val_checks=len(thresholds))
    assert out["best_epoch"] == 1 and out["val_dice"] == 1.0
    assert out["steps_per_epoch"] == 3  # 3 cases, batch 1: a check after epoch e is at step 3 (e + 1)
    assert [e for e, _ in out["val_curve"]] == [0, 1, 2, 3]
    assert [d for _, d in out["val_curve"]] == pytest.approx([dice_all, 1.0, 0.0, dice_all])
    assert net.t.item() == 0.5  # the best epoch's weights are loaded back, not the last epoch's
    assert load_weights(tmp_path / "model.safetensors")["t"].item() == 0.5


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_random_flips_draw_on_the_images_device(spatial_dims):
    """A CPU flip mask beside CUDA images raises on a GPU; the meta device shows the same mismatch on
    this machine (a mask made on the CPU fails here too)."""
    shape = (2, *[4] * spatial_dims)
    fx, fy = random_flips(torch.zeros(2, 1, *shape[1:], device="meta"),
                          torch.zeros(shape, dtype=torch.long, device="meta"))
    assert fx.device.type == fy.device.type == "meta" and fx.shape == (2, 1, *shape[1:])
