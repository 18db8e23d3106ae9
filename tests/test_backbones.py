import pytest
import torch

from medssl.errors import MedsslError
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
