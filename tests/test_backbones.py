import copy

import pytest
import torch
from bf16_grads import check_bf16_step

from medssl.errors import MedsslError
from medssl.registry import backbone_names, create_backbone

BF16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()


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


@pytest.mark.skipif(not BF16, reason="no native bf16 on this CPU")
@pytest.mark.parametrize("name", backbone_names())
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_every_backbone_has_right_bf16_gradients(name, spatial_dims):
    """bf16 against fp32 and every small conv against float64 (tests/bf16_grads.py). At 16 px the
    ResNets' last stages see 1-2 px: oneDNN's wrong sizes (3D 3x3x3 on 2^3, 3x3/2 on 1 px)."""
    net = create_backbone(name, spatial_dims, 1, width=0.125, img_size=16)
    x, w = torch.randn(8, 1, *[16] * spatial_dims), torch.randn(net.num_features)
    # a random projection (a ViT's LayerNorm'd output has a constant mean square: no gradient)
    check_bf16_step(net, lambda: (net(x).float() * w).sum(1).mean(), hits_the_bug=name.startswith("resnet"))


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


def test_resnet_gradients_on_relative_location_tiles():
    """3D ResNet-10 on 7^3 tiles (relative location on 28^3 volumes): 7^3 into the 7x7x7/2 stem
    (fp32 weight gradient ~1e22 without the guard) and 2^3 into layer1's 3x3x3 convs (bf16
    garbage without it). fp32: every conv's weight gradient against a float64 copy of the network
    (measured <= 4e-6); bf16: tests/bf16_grads.py (a float64 network is no reference for bf16: the
    rounding of 11 layers alone gives 0.2-0.4)."""
    torch.manual_seed(0)
    net = create_backbone("resnet10", 3, 1, width=0.25)
    ref = copy.deepcopy(net).double()
    x = torch.randn(32, 1, 7, 7, 7)
    net(x).pow(2).mean().backward()
    ref(x.double()).pow(2).mean().backward()
    for (name, p), q in zip(net.named_parameters(), ref.parameters(), strict=True):
        if "conv" in name:
            err = ((p.grad.double() - q.grad).abs().max() / q.grad.abs().max()).item()
            assert err <= 1e-4, f"{name}: {err:.3g}"
    if BF16:
        net.zero_grad()
        check_bf16_step(net, lambda: net(x).float().pow(2).mean())
