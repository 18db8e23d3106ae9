import pytest
import torch

from medssl.models.unet import UNet
from medssl.registry import create_backbone


@pytest.mark.parametrize("name,dims,size", [("resnet18_small", 2, 28), ("resnet18", 2, 64),
                                            ("resnet10", 3, 20), ("resnet18_small", 3, 12)])
def test_unet_outputs_input_resolution(name, dims, size):
    net = UNet(create_backbone(name, dims, 1, width=0.125), out_channels=3)
    assert net(torch.randn(2, 1, *[size] * dims)).shape == (2, 3, *[size] * dims)


def test_pretrained_encoder_keys_load_under_backbone_prefix():
    encoder = create_backbone("resnet18_small", 2, 1, width=0.125)
    net = UNet(create_backbone("resnet18_small", 2, 1, width=0.125), 2)
    missing, unexpected = net.backbone.load_state_dict(encoder.state_dict())
    assert not missing and not unexpected
    key = next(iter(encoder.state_dict()))
    assert torch.equal(net.state_dict()[f"backbone.{key}"], encoder.state_dict()[key])


def test_decoder_gets_gradients():
    net = UNet(create_backbone("resnet18_small", 2, 1, width=0.125), 1)
    net(torch.randn(2, 1, 16, 16)).mean().backward()
    assert all(p.grad is not None for p in net.decoder.parameters())
