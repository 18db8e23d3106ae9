"""ResNets for small medical images, 2D and 3D through one code path (``spatial_dims``).

Built on MONAI's ``ResNet`` rather than torchvision's: MONAI's takes ``spatial_dims`` (so the
same registered name gives a 2D or a 3D network), a ``widen_factor`` (half/quarter width for
CPU budgets) and a configurable stem, which torchvision's 2D-only ResNet does not.

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016.
"""

from __future__ import annotations

import torch
from monai.networks.nets.resnet import ResNet, get_inplanes
from torch import nn

from medssl.models.conv_guard import guard_convs
from medssl.models.registry import register_backbone


class ResNetBackbone(nn.Module):
    """A headless ResNet. ``forward_features``: [B, C, *S] -> [B, F, *S/stride]; ``forward``: -> [B, F].

    Args:
        layers: blocks per stage, e.g. ``[2, 2, 2, 2]`` for ResNet-18.
        spatial_dims: 2 or 3.
        in_channels: input channels (1 for grey scale, 3 for RGB).
        small_input: 3x3 stride-1 stem without max-pool (for 28 px); else the 7x7/2 stem + max-pool.
        width: channel multiplier (1.0 gives 64-512 channels).
    """

    def __init__(self, layers: list[int], spatial_dims: int, in_channels: int,
                 small_input: bool, width: float = 1.0) -> None:
        super().__init__()
        self.net = ResNet(
            block="basic", layers=layers, block_inplanes=get_inplanes(),
            spatial_dims=spatial_dims, n_input_channels=in_channels,
            conv1_t_size=3 if small_input else 7, conv1_t_stride=1 if small_input else 2,
            no_max_pool=small_input, widen_factor=width, feed_forward=False,
        )
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.num_features = int(get_inplanes()[-1] * width)
        self.feature_channels = [int(c * width) for c in get_inplanes()]  # per stage, for decoders
        guard_convs(self)  # oneDNN's wrong gradients on tiny inputs (stages of 1-2 voxels, 7^3 tiles)

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps after each of the four stages (strides 1-8 small stem, 4-32 standard)."""
        n = self.net
        x = n.act(n.bn1(n.conv1(x)))
        if not n.no_max_pool:
            x = n.maxpool(x)
        out = []
        for layer in (n.layer1, n.layer2, n.layer3, n.layer4):
            x = layer(x)
            out.append(x)
        return out

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.net.avgpool(self.forward_features(x)), 1)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """Parameters by depth, input first: the stem, then each stage (for layer-wise lr decay)."""
        n = self.net
        stem = [*n.conv1.parameters(), *n.bn1.parameters()]
        return [stem] + [list(layer.parameters()) for layer in (n.layer1, n.layer2, n.layer3, n.layer4)]


# Every factory takes ``img_size`` (ViTs need it to size their position embeddings); CNNs ignore it.


@register_backbone
def resnet18(spatial_dims: int = 2, in_channels: int = 1, width: float = 1.0,
             img_size: int | None = None) -> ResNetBackbone:
    """ResNet-18 with the standard 7x7/2 stem and max-pool (inputs of 64 px and more)."""
    return ResNetBackbone([2, 2, 2, 2], spatial_dims, in_channels, small_input=False, width=width)


@register_backbone
def resnet18_small(spatial_dims: int = 2, in_channels: int = 1, width: float = 1.0,
                   img_size: int | None = None) -> ResNetBackbone:
    """ResNet-18 with a 3x3 stride-1 stem and no max-pool (CIFAR-style, for 28 px inputs)."""
    return ResNetBackbone([2, 2, 2, 2], spatial_dims, in_channels, small_input=True, width=width)


@register_backbone
def resnet10(spatial_dims: int = 3, in_channels: int = 1, width: float = 1.0,
             img_size: int | None = None) -> ResNetBackbone:
    """ResNet-10 with the standard stem: the cheap choice for 3D volumes."""
    return ResNetBackbone([1, 1, 1, 1], spatial_dims, in_channels, small_input=False, width=width)
