"""ResNets for small medical images, 2D and 3D through one code path (``spatial_dims``).

Built on MONAI's ``ResNet`` rather than torchvision's: MONAI's takes ``spatial_dims`` (so the
same registered name gives a 2D or a 3D network), a ``widen_factor`` (half/quarter width for
CPU budgets) and a configurable stem, which torchvision's 2D-only ResNet does not.

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.nets.resnet import ResNet, get_inplanes
from torch import nn

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
        for conv in self.net.modules():
            if isinstance(conv, (nn.Conv2d, nn.Conv3d)) and max(conv.stride) > 1:
                guard_tiny_inputs(conv)

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


def tiny_input_padding(extents: tuple[int, ...], kernel: tuple[int, ...], pad: tuple[int, ...]) -> list[int]:
    """Zeros to add after each spatial extent so that a strided convolution avoids oneDNN's bad sizes.

    Why: oneDNN in torch 2.14.1 computes garbage weight gradients (up to 1e34, NaN, even heap
    corruption) for a few tiny inputs, checked against float64 here: a 1-voxel input to a 3x3/2
    convolution under bf16 (2D and 3D), and 5-7 voxel inputs to the 7x7x7/2 stem in fp32 (3D; the
    7^3 tiles of relative location). Every other extent from 1 to 9 is right. Adding at most
    ``pad`` zeros after the input (to 2, resp. kernel + 1 voxels) and cropping the output back is
    exact: the added zeros are ones the convolution's own padding would have read.
    """
    extra = []
    for e, k, p in zip(extents, kernel, pad, strict=True):
        if k > 1 and e == 1 and p >= 1:
            extra.append(1)
        elif k >= 5 and k == 2 * p + 1 and p + 1 < e <= k:
            extra.append(k + 1 - e)
        else:
            extra.append(0)
    return extra


def guard_tiny_inputs(conv: nn.Conv2d | nn.Conv3d) -> None:
    """Hooks on ``conv`` that pad tiny inputs (see ``tiny_input_padding``) and crop the output back."""
    def pad_input(module: nn.Module, args: tuple) -> tuple | None:
        x = args[0]
        extra = tiny_input_padding(tuple(x.shape[2:]), module.kernel_size, module.padding)
        module._crop_to = None
        if not any(extra):
            return None
        module._crop_to = [(e + 2 * p - k) // s + 1 for e, k, p, s in
                           zip(x.shape[2:], module.kernel_size, module.padding, module.stride, strict=True)]
        pads = [v for n in reversed(extra) for v in (0, n)]  # F.pad order: last dim first
        return (F.pad(x, pads),)

    def crop_output(module: nn.Module, _args: tuple, out: torch.Tensor) -> torch.Tensor | None:
        if module._crop_to is None:
            return None
        return out[(..., *(slice(0, n) for n in module._crop_to))]

    conv.register_forward_pre_hook(pad_input)
    conv.register_forward_hook(crop_output)


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
