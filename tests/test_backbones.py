import copy

import pytest
import torch
from torch import nn

from medssl.errors import MedsslError
from medssl.models.backbones.resnet import guard_tiny_inputs, tiny_input_padding
from medssl.registry import backbone_names, create_backbone


@pytest.mark.parametrize("name", backbone_names())
@pytest.mark.parametrize("spatial_dims,in_channels", [(2, 1), (2, 3), (3, 1)])
def test_every_backbone_in_2d_and_3d(name, spatial_dims, in_channels):
    size = 32 if spatial_dims == 2 else 16
    net = create_backbone(name, spatial_dims, in_channels, width=0.25, img_size=size)
    x = torch.randn(2, in_channels, *([size] * spatial_dims))
    pooled, fmap = net(x), net.forward_features(x)
    assert pooled.shape == (2, net.num_features)
    if hasattr(net, "stages"):  # CNN: a feature map per stage
        assert fmap.shape[:2] == (2, net.num_features) and fmap.dim() == 2 + spatial_dims
        assert [s.shape[1] for s in net.stages(x)] == net.feature_channels
    else:  # transformer: tokens, CLS first
        assert fmap.shape == (2, 1 + (size // net.patch_size) ** spatial_dims, net.num_features)
    pooled.sum().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", backbone_names())
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_every_backbone_runs_under_bf16_autocast(name, spatial_dims):
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("no native bf16 on this CPU")
    net = create_backbone(name, spatial_dims, 1, width=0.125, img_size=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(torch.randn(2, 1, *[16] * spatial_dims))
    assert out.shape == (2, net.num_features) and torch.isfinite(out.float()).all()


def test_small_stem_keeps_resolution_standard_stem_reduces_it():
    x = torch.randn(2, 1, 28, 28)
    small = create_backbone("resnet18_small", 2, 1).forward_features(x)
    standard = create_backbone("resnet18", 2, 1).forward_features(x)
    assert small.shape[-1] == 4 and standard.shape[-1] == 1  # strides 8 and 32


def test_width_scales_channels():
    assert create_backbone("resnet18_small", 2, 1, width=0.5).num_features == 256
    assert create_backbone("resnet18_small", 2, 1).num_features == 512
    assert create_backbone("vit_tiny", 2, 1).num_features == 192
    assert create_backbone("vit_tiny", 2, 1, width=0.5).num_features == 96


def test_vit_interpolates_position_embeddings_for_other_input_sizes():
    net = create_backbone("vit_tiny", 3, 1, width=0.25, img_size=16)  # native grid 4^3
    assert net.forward_features(torch.randn(2, 1, 8, 8, 8)).shape == (2, 1 + 2**3, 48)
    x = torch.randn(1, 1, 16, 16, 16)
    assert torch.equal(net._pos_embed((4, 4, 4)), net.pos_embed)
    assert net(x).shape == (1, 48)


def test_vit_rejects_an_image_size_the_patches_do_not_tile():
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        create_backbone("vit_tiny", 2, 1, img_size=30)


def test_unknown_backbone_lists_known_names():
    with pytest.raises(MedsslError, match=r"unknown backbone 'resnet999'.*resnet18_small"):
        create_backbone("resnet999")


def test_tiny_input_padding_only_for_the_bad_sizes():
    assert tiny_input_padding((1, 1), (3, 3), (1, 1)) == [1, 1]  # 1 px into 3x3/2 -> 2 px
    assert tiny_input_padding((5, 6, 7), (7, 7, 7), (3, 3, 3)) == [3, 2, 1]  # 7x7x7/2 stem -> 8 voxels
    assert tiny_input_padding((2, 3, 8), (3, 3, 3), (1, 1, 1)) == [0, 0, 0]
    assert tiny_input_padding((4, 8, 28), (7, 7, 7), (3, 3, 3)) == [0, 0, 0]
    assert tiny_input_padding((1,), (1,), (0,)) == [0]  # 1x1/2 downsampling: nothing to pad with


@pytest.mark.parametrize("spatial_dims,size,kernel,padding",
                         [(3, 7, 7, 3), (3, 5, 7, 3), (2, 1, 3, 1), (3, 1, 3, 1)])
def test_guarded_conv_equals_float64_reference(spatial_dims, size, kernel, padding):
    """Padding and cropping is exact; the guarded fp32 and bf16 weight gradients match float64
    (unguarded, fp32 3D 7x7x7/2 on 7^3 inputs gave gradients of ~1e28 here)."""
    torch.manual_seed(0)
    conv_cls = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
    conv = conv_cls(16, 8, kernel, stride=2, padding=padding, bias=False)
    ref = copy.deepcopy(conv).double()
    guard_tiny_inputs(conv)
    x = torch.randn(256, 16, *([size] * spatial_dims))
    y_ref = ref(x.double())
    y_ref.pow(2).mean().backward()
    for bf16 in (False, True):
        conv.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = conv(x)
        assert y.shape == y_ref.shape
        y.double().pow(2).mean().backward()
        tol = 2e-2 if bf16 else 1e-5
        torch.testing.assert_close(conv.weight.grad.double(), ref.weight.grad, rtol=tol, atol=tol)


def test_resnet_stem_gradient_on_relative_location_tiles():
    """3D ResNet-10 on 7^3 tiles (relative location on 28^3 volumes) trains with sane gradients."""
    torch.manual_seed(0)
    net = create_backbone("resnet10", 3, 1, width=0.25)
    ref = copy.deepcopy(net).double()
    x = torch.randn(64, 1, 7, 7, 7)
    net(x).pow(2).mean().backward()
    ref(x.double()).pow(2).mean().backward()
    torch.testing.assert_close(net.net.conv1.weight.grad.double(), ref.net.conv1.weight.grad,
                               rtol=1e-4, atol=1e-6)
