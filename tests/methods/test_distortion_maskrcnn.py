import pytest
import torch
import torch.nn.functional as F

from medssl.engine.checkpoint import load_weights, save_weights
from medssl.errors import MedsslError
from medssl.eval.instance_finetune import (
    instances_to_semantic,
    load_pretrained_detector,
    semantic_to_instances,
)
from medssl.methods.distortion_maskrcnn import DistortionMaskRCNN, DistortionMaskRCNNConfig
from medssl.models.maskrcnn import build_mask_rcnn, restoration_loss
from medssl.registry import create_backbone
from medssl.transforms.augment import ViewAugment
from medssl.transforms.corruptions.noise import blur

SIZE = 48
TERMS = {"loss", "loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg",
         "loss_restore"}


def tiny(size: int = SIZE, dims: int = 2, name: str = "resnet18_small", **cfg) -> DistortionMaskRCNN:
    backbone = create_backbone(name, dims, 1, width=0.125, img_size=size)
    return DistortionMaskRCNN(backbone, ViewAugment(dims, size), DistortionMaskRCNNConfig(**cfg))


def images(n: int = 2, size: int = SIZE) -> torch.Tensor:
    """Smooth, high-contrast random images (the distortions must be visible)."""
    x = torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(0))
    return blur(x, torch.full((n,), 2.0), 4).sub(0.5).mul(4).add(0.5).clamp(0, 1)


def test_restoration_head_shape_and_l1_against_the_original():
    model = build_mask_rcnn(create_backbone("resnet18_small", 2, 1, width=0.125), 7, 32)
    x = images(2, 32)
    feats = model.backbone((x - 0.5) / 0.25)
    boxes = [torch.tensor([[2.0, 2.0, 30.0, 30.0], [1.0, 0.0, 17.0, 20.0]]),
             torch.tensor([[1.0, 2.0, 29.0, 30.0]])]
    shapes = [(32, 32)] * 2
    restored = model.roi_heads.restore(feats, boxes, shapes)
    assert restored.shape == (3, 1, 28, 28) and restored.min() >= 0 and restored.max() <= 1
    # 28 px boxes over 28 bins: torchvision's (non-aligned) RoIAlign samples each bin at a pixel
    # corner, i.e. the mean of a 2x2 block; so the targets of the two 28 px boxes are 2x2 means.
    means = F.avg_pool2d(x, 2, stride=1)  # [2, 1, 31, 31], means[..., i, j] = mean x[i:i+2, j:j+2]
    hand = torch.stack([means[0, :, 2:30, 2:30], means[1, :, 2:30, 1:29]])
    keep = [0, 2]  # the 28 px boxes
    loss = restoration_loss(restored[keep], [boxes[0][:1], boxes[1]], list(x), shapes, "l1")
    torch.testing.assert_close(loss, (restored[keep] - hand).abs().mean())
    mse = restoration_loss(restored[keep], [boxes[0][:1], boxes[1]], list(x), shapes, "mse")
    torch.testing.assert_close(mse, (restored[keep] - hand).pow(2).mean())


def test_training_step_returns_all_finite_terms_and_trains_the_encoder():
    model = tiny(restore_weight=2.0)
    out = model.training_step({"image": images()})
    assert set(out) == TERMS
    assert all(v.dtype == torch.float32 and v.dim() == 0 and torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    assert all(p.grad is not None for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.detector.roi_heads.restore_predictor.parameters())


def test_fixed_batch_loss_decreases():
    model, x = tiny(), images(4)
    state = model.generator.get_state()

    def step() -> dict[str, torch.Tensor]:
        model.generator.set_state(state)  # the same distorted batch every step
        torch.manual_seed(0)  # the same RPN / RoI samples
        return model.training_step({"image": x})

    with torch.no_grad():
        before = step()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(15):
        loss = step()["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = step()
    assert after["loss"] < 0.7 * before["loss"]
    assert after["loss_restore"] < before["loss_restore"]


def test_bf16_autocast_and_channels_last():
    model = tiny().to(memory_format=torch.channels_last)
    x = images().contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.training_step({"image": x})
    assert set(out) == TERMS and all(v.dtype == torch.float32 and torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.backbone.parameters())
    assert model.detector.backbone.autocast_dtype is None  # reset after the step


def test_predict_returns_detections_with_restored_patches():
    model = tiny(max_regions=2)
    model.train()
    dets = model.predict(model.distort(images()).input)
    assert model.training and len(dets) == 2
    for d in dets:
        n = len(d["boxes"])
        assert d["masks"].shape == (n, 1, SIZE, SIZE) and d["restored"].shape == (n, 1, 28, 28)


def test_state_dict_keeps_the_backbone_once_and_loads_into_a_fresh_backbone(tmp_path):
    model = tiny()
    state = model.state_dict()
    assert not any(k.startswith("detector.backbone.body.") for k in state)
    assert {k.removeprefix("backbone.") for k in state if k.startswith("backbone.")} == set(
        model.backbone.state_dict())
    fresh = create_backbone("resnet18_small", 2, 1, width=0.125, img_size=SIZE)
    fresh.load_state_dict(model.backbone.state_dict(), strict=True)
    save_weights(model, tmp_path / "w.safetensors")  # safetensors refuses shared tensors
    other = tiny()
    other.load_state_dict(load_weights(tmp_path / "w.safetensors"), strict=True)
    assert torch.equal(other.detector.backbone.body.net.conv1.weight, model.backbone.net.conv1.weight)
    assert other.detector.backbone.body is other.backbone


def test_volumes_and_vits_are_refused():
    with pytest.raises(MedsslError, match="distortion_dense"):
        tiny(size=16, dims=3, name="resnet10")
    with pytest.raises(MedsslError, match="stages"):
        tiny(size=32, name="vit_tiny")


def test_semantic_instance_round_trip():
    label = torch.zeros(12, 12, dtype=torch.long)
    label[1:4, 1:5] = 1
    label[6:10, 2:4] = 1  # a second component of class 1
    label[5:11, 7:11] = 2
    t = semantic_to_instances(label, 3)
    assert t["labels"].tolist() == [1, 1, 2] and t["masks"].shape == (3, 12, 12)
    assert t["boxes"][0].tolist() == [1.0, 1.0, 5.0, 4.0]  # xyxy, hi exclusive
    dets = {"labels": t["labels"], "scores": torch.tensor([0.9, 0.8, 0.7]),
            "masks": t["masks"][:, None].float()}
    assert torch.equal(instances_to_semantic(dets, (12, 12), 3), label)
    dets["scores"] = torch.tensor([0.9, 0.3, 0.7])  # below the threshold: not painted
    assert instances_to_semantic(dets, (12, 12), 3)[6:10, 2:4].eq(0).all()
    empty = semantic_to_instances(torch.zeros(5, 5, dtype=torch.long), 3)
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 5, 5)


def test_load_pretrained_detector_skips_the_class_specific_predictors():
    pretrained = tiny()
    finetune = build_mask_rcnn(create_backbone("resnet18_small", 2, 1, width=0.125), 3, SIZE,
                               restoration=False)
    report = load_pretrained_detector(finetune, pretrained.state_dict())
    loaded = set(report["loaded"])
    for prefix in ("backbone.body.", "backbone.fpn.", "rpn.", "roi_heads.box_head.", "roi_heads.mask_head."):
        assert any(k.startswith(prefix) for k in loaded), prefix
    for key in ("roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.bbox_pred.weight",
                "roi_heads.mask_predictor.mask_fcn_logits.weight"):
        assert key in report["skipped"] and key not in loaded
    assert any(k.startswith("roi_heads.restore_head.") for k in report["skipped"])
    ref = pretrained.detector.state_dict()
    tuned = finetune.state_dict()
    assert all(torch.equal(tuned[k], ref[k]) for k in loaded)
    # same number of classes: every detector tensor but the restoration branch is carried over
    same = build_mask_rcnn(create_backbone("resnet18_small", 2, 1, width=0.125), 7, SIZE, restoration=False)
    assert set(load_pretrained_detector(same, pretrained.state_dict())["loaded"]) == set(same.state_dict())
