"""U-Net-style encoder-decoder around any registered CNN backbone, 2D or 3D.

Ronneberger et al., "U-Net", MICCAI 2015. The encoder is the registered backbone itself (so an
SSL-pretrained encoder loads into it unchanged, under the ``backbone.`` prefix); the decoder
upsamples by interpolation to each skip's exact size (odd sizes such as 7 -> 4 -> 7 round-trip),
concatenates the skip and applies MONAI's ``TwoConv`` block. ``skips=False`` drops the
concatenation: the same upsampling path then decodes from the deepest stage alone, the "few
deconvolution layers" Chen et al. (MedIA 2019, context restoration) prefer before classification,
because a restoration that may copy shallow skips need not encode the image in the deepest stage.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.layers import Conv
from monai.networks.nets.basic_unet import TwoConv
from torch import nn

from medssl.models.conv_guard import guard_convs

ACT = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True})
NORM = ("instance", {"affine": True})


class UNet(nn.Module):
    """Backbone stages -> decoder -> per-pixel/voxel outputs at the input resolution.

    Args:
        backbone: a registered backbone with ``stages(x)``, ``feature_channels``, ``spatial_dims``.
        out_channels: output channels (classes for segmentation, image channels for restoration).
        skips: concatenate each encoder stage into the decoder (U-Net); False decodes from the
            deepest stage only (a plain decoder of the same depth).

    Shapes: ``forward``: [B, C, *S] -> [B, out_channels, *S].
    """

    def __init__(self, backbone: nn.Module, out_channels: int, skips: bool = True) -> None:
        super().__init__()
        self.backbone, self.skips = backbone, skips
        dims, chans = backbone.spatial_dims, list(backbone.feature_channels)
        ups, in_ch = [], chans[-1]
        for skip in reversed(chans[:-1]):
            ups.append(TwoConv(dims, in_ch + skip * skips, skip, ACT, NORM, bias=True))
            in_ch = skip
        self.decoder = nn.ModuleList(ups)
        self.head = Conv[Conv.CONV, dims](in_ch, out_channels, kernel_size=1)
        guard_convs(self)  # decoder and head; the backbone guards its own (oneDNN's tiny-input bug)

    def decode(self, stages: list[torch.Tensor], size: torch.Size) -> torch.Tensor:
        """Decoder from the encoder's stage outputs (deepest last) up to spatial ``size``."""
        mode = "bilinear" if len(size) == 2 else "trilinear"
        y = stages[-1]
        for block, skip in zip(self.decoder, reversed(stages[:-1]), strict=True):
            y = F.interpolate(y, size=skip.shape[2:], mode=mode, align_corners=False)
            y = block(torch.cat([y, skip], dim=1) if self.skips else y)
        y = self.head(y)
        if y.shape[2:] != size:  # standard stems end at stride 4: interpolate the rest
            y = F.interpolate(y, size=size, mode=mode, align_corners=False)
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.backbone.stages(x), x.shape[2:])
