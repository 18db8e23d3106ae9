"""The oneDNN tiny-input guard (medssl/models/conv_guard.py) against a float64 reference.

oneDNN in torch 2.14.1 returns wrong weight gradients for some convolutions on tiny inputs (the
table is in conv_guard's docstring). The sweep below runs every extent 1-8, stride 1-2 and kernel
1/3/7, 2D and 3D, fp32 and bf16 autocast, through a guarded conv and compares its weight and input
gradients with float64. The batch and channel counts are ones that trigger the bug: without the
guard (``conv_guard._BAD_DEVICE`` set to another device) the sweep fails with these seeds: bf16 2D
3x3/2 on 1 px (inf), 3D 3x3x3 on 2^3 (0.96) and 3x3x3/2 on 1^3 (inf), 2D 7x7 on 1-2 px (1.15,
5e27), and the 3D 7x7x7 sweep kills the process (segfault, heap corruption).
"""

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import medssl.models.conv_guard as conv_guard
from medssl.errors import MedsslError
from medssl.methods import METHODS, create_method
from medssl.models.conv_guard import (
    GuardedConv2d,
    fp32_convolution,
    guard_convs,
    is_guarded,
    is_tiny,
    onednn_off,
    unguarded_convs,
)
from medssl.models.maskrcnn import build_mask_rcnn
from medssl.models.unet import UNet
from medssl.registry import backbone_names, create_backbone

BF16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()

# Tolerances on max |grad - grad_float64| / max |grad_float64| (per tensor).
# bf16: autocast rounds inputs, weights and the upstream gradient to 8 significant bits (relative
# step 2^-8 = 0.004). Right oneDNN bf16 results measured on the sweep (N 2-64, C 1-512, 3 seeds)
# were <= 0.0075; the guarded tiny cases compute in fp32 and round only the output (<= 0.004).
# Wrong results were 1e31-inf in most cases and never below 0.037, so 0.02 separates them.
# fp32: right results <= 3e-6 measured (fp32 accumulation over <= 10^5 terms); 1e-4.
TOL = {"fp32": 1e-4, "bf16": 0.02}

# Per (dims, kernel): batch and channels, as small as still triggers the bug without the guard
# (3x3(x3) and 3D 7x7x7 need >= 16 channels, 2D 7x7 on 1-2 px needs 128).
SIZES = {(2, 1): (2, 16), (3, 1): (2, 16), (2, 3): (2, 16), (3, 3): (2, 16), (2, 7): (8, 128),
         (3, 7): (2, 16)}


def rel_err(value: torch.Tensor, ref: torch.Tensor) -> float:
    value = value.double()
    if not torch.isfinite(value).all():
        return float("inf")
    return ((value - ref).abs().max() / ref.abs().max()).item()


def sweep_errors(dims: int, kernel: int, stride: int, extent: int, seed: int = 0) -> dict[str, float]:
    """Errors of a guarded conv's output, weight and input gradients in fp32 and bf16 vs float64."""
    n, c = SIZES[dims, kernel]
    g = torch.Generator().manual_seed(seed)
    conv = guard_convs((nn.Conv2d if dims == 2 else nn.Conv3d)(c, c, kernel, stride, kernel // 2, bias=True))
    x = torch.randn(n, c, *[extent] * dims, generator=g)
    ref = copy.deepcopy(conv).double()
    x_ref = x.double().requires_grad_()
    y_ref = F.conv3d if dims == 3 else F.conv2d
    y_ref = y_ref(x_ref, ref.weight, ref.bias, stride, kernel // 2)
    grad = torch.randn(y_ref.shape, generator=g)
    y_ref.backward(grad.double())
    errors = {}
    for precision in ("fp32", "bf16") if BF16 else ("fp32",):
        conv.zero_grad()
        xx = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            y = conv(xx)
        assert y.dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
        y.float().backward(grad)
        for name, value, expect in (("out", y, y_ref), ("weight", conv.weight.grad, ref.weight.grad),
                                    ("bias", conv.bias.grad, ref.bias.grad), ("input", xx.grad, x_ref.grad)):
            errors[f"{precision} {name}"] = rel_err(value, expect.detach())
    return errors


@pytest.mark.parametrize("dims,kernel", sorted(SIZES))
def test_guarded_gradients_match_float64_for_every_small_extent(dims, kernel):
    bad = []
    for stride, extent in itertools.product((1, 2), range(1, 9)):
        for name, err in sweep_errors(dims, kernel, stride, extent).items():
            if not err <= TOL[name.split()[0]]:
                bad.append(f"{dims}D k{kernel} s{stride} extent {extent}: {name} error {err:.3g}")
    assert not bad, "\n".join(bad)


def test_is_tiny_covers_every_measured_wrong_case_and_nothing_large():
    wrong = [  # (extent, kernel) of every wrong case measured (see conv_guard), any stride/dims/dtype
        (2, 3), (1, 3), (1, 7), (2, 7), (3, 7), (4, 7), (5, 7), (6, 7), (7, 7)]
    assert all(is_tiny((e, 16, 16), (k, k, k)) and is_tiny((16, e), (k, k)) for e, k in wrong)
    assert not is_tiny((4, 4, 4), (3, 3, 3)) and not is_tiny((8, 8), (7, 7)) and not is_tiny((1, 1), (1, 1))
    assert not is_tiny((28, 28), (4, 4)) and is_tiny((4, 28), (4, 4))  # a patch embedding on 1 patch


def _fail_if_called(*args, **kwargs):
    raise AssertionError("the guard took the fp32 path")


def test_guard_costs_one_shape_check_for_normal_sizes_and_is_off_on_other_devices(monkeypatch):
    monkeypatch.setattr(conv_guard, "fp32_convolution", _fail_if_called)
    conv = guard_convs(nn.Conv3d(4, 4, 3, padding=1))
    x = torch.randn(2, 4, 4, 4, 4)
    assert torch.equal(conv(x), F.conv3d(x, conv.weight, conv.bias, padding=1))  # the plain path
    tiny = torch.randn(2, 4, 2, 2, 2, device="meta")  # a non-CPU device: the plain path, even when tiny
    assert conv.to("meta")(tiny).shape == (2, 4, 2, 2, 2)


@pytest.mark.parametrize("make,size", [
    (lambda: nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect"), (3, 3)),
    (lambda: nn.Conv2d(4, 6, 3, padding=1, padding_mode="circular"), (2, 5)),
    (lambda: nn.Conv3d(4, 6, 3, padding="same", dilation=2, groups=2), (2, 3, 4)),
    (lambda: nn.Conv3d(4, 6, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)), (1, 1, 3)),
    (lambda: nn.ConvTranspose2d(4, 6, 2, stride=2), (1, 2)),
    (lambda: nn.ConvTranspose3d(4, 6, 3, stride=2, padding=1, output_padding=1), (2, 1, 3)),
])
@pytest.mark.parametrize("onednn", [True, False])
def test_fp32_path_equals_the_plain_convolution(make, size, onednn):
    """Exact for padding modes, "same", dilation, groups, transposed convs and unbatched inputs."""
    torch.manual_seed(0)
    plain = make().double()  # float64: ATen's kernels, the reference
    guarded = guard_convs(copy.deepcopy(plain))
    for x in (torch.randn(3, 4, *size, dtype=torch.float64), torch.randn(4, *size, dtype=torch.float64)):
        y_ref = plain(x.requires_grad_())
        grad = torch.randn_like(y_ref)
        y_ref.backward(grad)
        xx = x.detach().clone().requires_grad_()
        y = fp32_convolution(guarded, xx, onednn=onednn)
        y.backward(grad)
        assert y.dtype == torch.float64 and y.shape == y_ref.shape
        torch.testing.assert_close(y, y_ref)
        torch.testing.assert_close(xx.grad, x.grad)
        for p, q in zip(guarded.parameters(), plain.parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad)
            p.grad, q.grad = None, None
    transposed = guard_convs(nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1)).double()
    x = torch.randn(1, 4, 2, 2, dtype=torch.float64)
    assert transposed(x, output_size=[4, 4]).shape == (1, 6, 4, 4)  # output_size reaches the fp32 path


def test_onednn_flag_is_restored_after_errors():
    assert torch._C._get_mkldnn_enabled()
    with pytest.raises(RuntimeError), onednn_off():
        assert not torch._C._get_mkldnn_enabled()
        raise RuntimeError
    assert torch._C._get_mkldnn_enabled()


def test_guarding_keeps_parameters_keys_and_copies():
    plain = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ConvTranspose2d(2, 1, 2))
    keys = list(plain.state_dict())
    net = guard_convs(plain)
    assert net is plain and list(net.state_dict()) == keys and unguarded_convs(net) == []
    assert isinstance(net[0], nn.Conv2d) and type(net[0]) is GuardedConv2d
    assert guard_convs(net) is net and type(net[0]) is GuardedConv2d  # idempotent
    twin = copy.deepcopy(net)  # momentum encoders are deep copies
    assert is_guarded(twin[0]) and twin[0].weight is not net[0].weight
    with torch.no_grad():
        twin[0].weight.zero_()
        twin[0].bias.zero_()
    x = torch.rand(2, 1, 3, 3)  # 1-px output: the fp32 path, which must read the copy's own weights
    assert torch.equal(twin[0](x), torch.zeros(2, 2, 1, 1)) and net[0](x).abs().sum() > 0
    assert unguarded_convs(nn.Sequential(nn.Linear(2, 2), nn.Conv3d(1, 1, 1))) == ["1"]


def _every_model():
    """(name, model) for every registered backbone, the U-Net, Mask R-CNN and every method."""
    for name in backbone_names():
        for dims in (2, 3):
            yield f"{name} {dims}D", create_backbone(name, dims, 1, width=0.125, img_size=16)
    for dims in (2, 3):
        yield f"unet {dims}D", UNet(create_backbone("resnet18_small", dims, 1, width=0.125), 2)
    yield "mask r-cnn", build_mask_rcnn(create_backbone("resnet18_small", 2, 1, width=0.125), 3, 32)
    for method in METHODS:
        for dims in (2, 3):
            for backbone in ("resnet18_small", "vit_tiny"):
                net = create_backbone(backbone, dims, 1, width=0.125, img_size=16)
                try:
                    yield f"{method} {dims}D {backbone}", create_method(method, net, dims, 16, {})
                except MedsslError:  # the method needs the other kind of backbone or 2D
                    continue


def test_every_conv_of_every_model_is_guarded():
    """A new backbone, head or method whose convolutions skip ``guard_convs`` fails here."""
    checked = {}
    for name, model in _every_model():
        checked[name] = unguarded_convs(model)
    assert len(checked) > 2 * len(backbone_names()) + len(METHODS)
    assert {name: convs for name, convs in checked.items() if convs} == {}
