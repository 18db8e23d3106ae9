import pytest
import torch
from bf16_grads import check_bf16_step

from medssl.engine.checkpoint import load_weights, save_weights
from medssl.errors import MedsslError
from medssl.losses import masked_patch_loss, reconstruction_loss
from medssl.methods import create_method
from medssl.registry import create_backbone
from medssl.transforms.corruptions import patchify
from medssl.transforms.corruptions.noise import blur

RESTORATIVE = ["genesis", "context_restoration", "denoising", "mae"]
BF16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()


def tiny(name: str, dims: int = 2, size: int = 16, **args):
    """A tiny method: width 0.125 ResNet (resnet10 in 3D) or ViT for MAE."""
    bb = "vit_tiny" if name == "mae" else ("resnet18_small" if dims == 2 else "resnet10")
    backbone = create_backbone(bb, dims, 1, width=0.125, img_size=size)
    return create_method(name, backbone, dims, size, args), backbone


def images(dims: int = 2, n: int = 8, size: int = 16) -> torch.Tensor:
    """Smooth, high-contrast random images (pure noise has nothing to learn)."""
    x = torch.rand(n, 1, *[size] * dims, generator=torch.Generator().manual_seed(0))
    return blur(x, torch.full((n,), 2.0), 4).sub(0.5).mul(4).add(0.5).clamp(0, 1)


def loss_on_fixed_corruption(model, x) -> float:
    state = model.generator.get_state()
    with torch.no_grad():
        loss = model.training_step({"image": x})["loss"].item()
    model.generator.set_state(state)
    return loss


@pytest.mark.parametrize("name", RESTORATIVE)
def test_restorative_methods_reduce_reconstruction_loss(name):
    model, _ = tiny(name, augment=False)
    x = images()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    before = loss_on_fixed_corruption(model, x)
    for _ in range(10):
        loss = model.training_step({"image": x})["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss_on_fixed_corruption(model, x) < 0.9 * before


@pytest.mark.parametrize("name", RESTORATIVE)
def test_restorative_step_in_3d(name):
    size = 8 if name == "mae" else 20
    model, backbone = tiny(name, 3, size)
    out = model.training_step({"image": torch.rand(2, 1, *[size] * 3)})
    out["loss"].backward()
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    assert all(p.grad is not None for p in backbone.parameters() if p.requires_grad)


@pytest.mark.skipif(not BF16, reason="no native bf16 on this CPU")
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", RESTORATIVE)
def test_bf16_gradients_match_fp32(name, dims):
    """bf16 step against fp32 on the same corruptions, small convs against float64 (bf16_grads.py).
    3D: resnet10 at 20^3 feeds layer3 2^3 and layer4 1^3, and the U-Net decoder 2^3 (oneDNN's
    wrong sizes); MAE's ViT at 8^3 has no tiny conv."""
    size = 8 if name == "mae" and dims == 3 else (20 if dims == 3 else 16)
    model, _ = tiny(name, dims, size)
    x = images(dims, n=4, size=size)
    check_bf16_step(model, lambda: model.training_step({"image": x})["loss"],
                    hits_the_bug=dims == 3 and name != "mae")


def test_genesis_encoder_is_the_backbone_and_saved_once(tmp_path):
    model, backbone = tiny("genesis")
    assert model.backbone is backbone and model.net.backbone is backbone
    assert len(model.net.decoder) == 3 and model.net.head.out_channels == 1
    keys = list(model.state_dict())
    assert not any(k.startswith("net.backbone.") for k in keys)
    assert {k[len("backbone."):] for k in keys if k.startswith("backbone.")} == set(backbone.state_dict())
    save_weights(model, tmp_path / "m.safetensors")  # safetensors refuses shared tensors
    fresh, _ = tiny("genesis")
    fresh.load_state_dict(load_weights(tmp_path / "m.safetensors"))  # strict
    assert torch.equal(fresh.net.backbone.net.conv1.weight, backbone.net.conv1.weight)


def test_saved_generator_state_replays_the_same_corruptions(tmp_path):
    model, _ = tiny("genesis")
    save_weights(model, tmp_path / "m.safetensors")
    x = images(n=4)
    first = model.corrupt(x).input
    model.load_state_dict(load_weights(tmp_path / "m.safetensors"))
    assert torch.equal(model.corrupt(x).input, first)


@pytest.mark.parametrize("name,backbone", [("genesis", "vit_tiny"), ("denoising", "vit_tiny"),
                                           ("mae", "resnet18_small")])
def test_incompatible_backbones_are_one_line_errors(name, backbone):
    net = create_backbone(backbone, 2, 1, width=0.125, img_size=16)
    with pytest.raises(MedsslError, match="backbone") as err:
        create_method(name, net, 2, 16, {})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name,args", [("genesis", {"loss": "huber"}), ("mae", {"mask_ratio": 1.0}),
                                       ("denoising", {"decoder": "none"})])
def test_bad_options_are_errors(name, args):
    with pytest.raises(MedsslError):
        tiny(name, **args)


@pytest.mark.parametrize("ratio,visible", [(0.4, 10), (0.75, 4)])
def test_mae_encodes_only_visible_patches(ratio, visible):
    model, _ = tiny("mae", mask_ratio=ratio)
    c = model.corrupt(images(n=2))
    assert model.encode(c.target, c.meta["ids_keep"]).shape[1] == 1 + visible  # CLS + visible of 16
    restored = model.restore(c)
    keep = ~c.meta["mask"]
    assert torch.allclose(patchify(restored, 4)[keep], patchify(c.target, 4)[keep])


def test_masked_patch_loss_matches_naive_reference_and_ignores_visible_patches():
    pred, target = torch.randn(2, 5, 3), torch.rand(2, 5, 3)
    mask = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 1, 1, 0]], dtype=torch.bool)
    terms = [((pred[b, n] - target[b, n]) ** 2).mean() for b in range(2) for n in range(5) if mask[b, n]]
    assert torch.allclose(masked_patch_loss(pred, target, mask), torch.stack(terms).mean())
    changed = pred.clone()
    changed[~mask] = 100.0
    assert torch.allclose(masked_patch_loss(changed, target, mask), masked_patch_loss(pred, target, mask))
    norm = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    assert torch.allclose(masked_patch_loss(pred, target, mask, norm_pix=True),
                          masked_patch_loss(pred, norm, mask))


def test_reconstruction_loss_over_a_region():
    pred, target = torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4)
    region = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    region[0, 0, :2] = True
    assert torch.allclose(reconstruction_loss(pred, target, region),
                          ((pred - target)[region] ** 2).mean())
    assert torch.allclose(reconstruction_loss(pred, target, kind="l1"), (pred - target).abs().mean())


@pytest.mark.parametrize("name", ["genesis", "context_restoration", "denoising"])
@pytest.mark.parametrize("dims", [2, 3])
def test_plain_decoder_restores_from_the_deepest_stage_alone(name, dims):
    """decoder=plain: the restoration is a function of the encoder's last stage only (Chen et al.'s
    classification decoder), so the encoder must carry the image; unet also reads the shallow ones."""
    size = 16 if dims == 2 else 24  # resnet10 (stride 32): deepest decoder block at 2^3
    x = images(dims, n=2, size=size)
    for decoder, reads_shallow in (("plain", False), ("unet", True)):
        model, backbone = tiny(name, dims, size, decoder=decoder)
        stages = [s.detach().requires_grad_() for s in backbone.stages(x)]
        model.net.decode(stages, x.shape[2:]).sum().backward()
        assert stages[-1].grad.abs().sum() > 0
        assert all((s.grad is not None and s.grad.abs().sum() > 0) == reads_shallow for s in stages[:-1])
        loss = model.training_step({"image": x})["loss"]
        loss.backward()
        assert torch.isfinite(loss) and backbone.net.conv1.weight.grad.abs().sum() > 0
