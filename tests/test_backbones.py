import pytest
import torch

from medssl.errors import MedsslError
from medssl.registry import backbone_names, create_backbone


@pytest.mark.parametrize("name", backbone_names())
@pytest.mark.parametrize("spatial_dims,in_channels", [(2, 1), (2, 3), (3, 1)])
def test_every_backbone_in_2d_and_3d(name, spatial_dims, in_channels):
    net = create_backbone(name, spatial_dims, in_channels, width=0.25)
    x = torch.randn(2, in_channels, *([32 if spatial_dims == 2 else 16] * spatial_dims))
    pooled, fmap = net(x), net.forward_features(x)
    assert pooled.shape == (2, net.num_features)
    assert fmap.shape[:2] == (2, net.num_features) and fmap.dim() == 2 + spatial_dims
    stages = net.stages(x)
    assert [s.shape[1] for s in stages] == net.feature_channels


def test_small_stem_keeps_resolution_standard_stem_reduces_it():
    x = torch.randn(2, 1, 28, 28)
    small = create_backbone("resnet18_small", 2, 1).forward_features(x)
    standard = create_backbone("resnet18", 2, 1).forward_features(x)
    assert small.shape[-1] == 4 and standard.shape[-1] == 1  # strides 8 and 32


def test_width_scales_channels():
    assert create_backbone("resnet18_small", 2, 1, width=0.5).num_features == 256
    assert create_backbone("resnet18_small", 2, 1).num_features == 512


def test_unknown_backbone_lists_known_names():
    with pytest.raises(MedsslError, match=r"unknown backbone 'resnet999'.*resnet18_small"):
        create_backbone("resnet999")
