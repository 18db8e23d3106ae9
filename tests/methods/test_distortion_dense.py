import pytest
import torch
import torch.nn.functional as F
from bf16_grads import check_bf16_step

from medssl.errors import MedsslError
from medssl.methods import create_method, method_config
from medssl.registry import create_backbone
from medssl.transforms.corruptions.noise import blur
from medssl.transforms.corruptions.regions import DISTORTION_TYPES

BF16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()


def tiny(dims: int = 2, size: int = 24, **args):
    backbone = create_backbone("resnet18_small" if dims == 2 else "resnet10", dims, 1, width=0.125)
    return create_method("distortion-dense", backbone, dims, size, args), backbone


def images(dims: int = 2, n: int = 8, size: int = 24) -> torch.Tensor:
    x = torch.rand(n, 1, *[size] * dims, generator=torch.Generator().manual_seed(0))
    return blur(x, torch.full((n,), 2.0), 4).sub(0.5).mul(4).add(0.5).clamp(0, 1)


@pytest.mark.parametrize("dims", [2, 3])
def test_outputs_and_loss_terms(dims):
    model, backbone = tiny(dims)
    x = images(dims, n=2)
    d = model.distort(x)
    logits, restored = model.predict(d.input)
    assert logits.shape == (2, len(DISTORTION_TYPES) + 1, *x.shape[2:]) and restored.shape == x.shape
    state = model.generator.get_state()
    out = model.training_step({"image": x})
    model.generator.set_state(state)
    d = model.distort(x)
    logits, restored = model.predict(d.input)  # eval of the same weights on the same distortion
    expect = F.cross_entropy(logits, d.type_map) + F.mse_loss(restored, x)
    torch.testing.assert_close(out["loss"], expect, rtol=1e-4, atol=1e-5)
    out["loss"].backward()
    assert all(p.grad is not None for p in backbone.parameters())
    assert {"type_ce", "restore", "region_iou", "type_acc"} <= set(out)


def test_weights_scale_the_terms():
    model, _ = tiny(type_weight=2.0, restore_weight=0.5)
    state = model.generator.get_state()
    out = model.training_step({"image": images(n=2)})
    model.generator.set_state(state)
    assert torch.isclose(out["loss"], 2.0 * out["type_ce"] + 0.5 * out["restore"])


def test_training_reduces_the_combined_loss():
    torch.manual_seed(0)
    model, _ = tiny()
    x = images()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    state = model.generator.get_state()

    def fixed_loss() -> float:
        model.generator.set_state(state)
        with torch.no_grad():
            return model.training_step({"image": x})["loss"].item()

    before = fixed_loss()
    for _ in range(25):
        model.generator.set_state(state)
        loss = model.training_step({"image": x})["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert fixed_loss() < 0.75 * before


@pytest.mark.skipif(not BF16, reason="no native bf16 on this CPU")
@pytest.mark.parametrize("dims,size", [(2, 24), (3, 20)])
def test_bf16_gradients_match_fp32(dims, size):
    """bf16 step against fp32 on the same distortions, small convs against float64 (bf16_grads.py).
    3D: resnet10 at 20^3 feeds layer3 and the U-Net decoder 2^3 (oneDNN's wrong size)."""
    model, _ = tiny(dims, size)
    x = images(dims, n=2, size=size)
    check_bf16_step(model, lambda: model.training_step({"image": x})["loss"], hits_the_bug=dims == 3)


def test_bad_config():
    with pytest.raises(MedsslError, match="unknown distortion types"):
        tiny(types=["swirl"])
    with pytest.raises(MedsslError, match="restore_loss"):
        tiny(restore_loss="ssim")
    with pytest.raises(MedsslError, match="unknown key"):
        method_config("distortion_dense", {"regions": 3})
    vit = create_backbone("vit_tiny", 2, 1, img_size=16)
    with pytest.raises(MedsslError, match="CNN backbone"):
        create_method("distortion_dense", vit, 2, 16, {})
