"""A small Vision Transformer for 2D images and 3D volumes (one code path through ``spatial_dims``).

Built from MONAI's ``TransformerBlock`` (pre-norm attention + MLP, SDPA attention) with our own
patch embedding, because MONAI's ``ViT`` fixes its position embeddings to one input size while
DINO's multi-crop feeds smaller local crops: here the learned position embeddings are
interpolated to the input's patch grid.

Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.blocks import TransformerBlock
from torch import nn

from medssl.models.conv_guard import guard_convs
from medssl.models.registry import register_backbone


class ViTBackbone(nn.Module):
    """A headless ViT with a CLS token.

    ``forward_features``: [B, C, *S] -> tokens [B, 1 + N, D] (CLS first, N = prod(S / patch));
    ``forward``: -> [B, D], the normalised CLS token.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        img_size: side length the position embeddings are laid out for (other sizes interpolate).
        patch_size: patch side length.
        dim, depth, heads, mlp_ratio: transformer width, blocks, attention heads, MLP expansion.
    """

    def __init__(self, spatial_dims: int, in_channels: int, img_size: int, patch_size: int = 4,
                 dim: int = 192, depth: int = 6, heads: int = 3, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.patch_size = patch_size
        self.grid = img_size // patch_size
        self.num_features = dim
        self.patch_embed = conv(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid ** spatial_dims, dim))
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, int(dim * mlp_ratio), heads, qkv_bias=True, use_flash_attention=True)
            for _ in range(depth))
        for block in self.blocks:  # MONAI builds this norm even without cross-attention: unused weights
            block.norm_cross_attn = nn.Identity()
        self.norm = nn.LayerNorm(dim)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        guard_convs(self)  # the patch embedding (no wrong case measured for it, but new sizes may differ)

    def _pos_embed(self, grid: tuple[int, ...]) -> torch.Tensor:
        """[1, N, D] position embeddings for a patch grid, interpolated if it is not the native one."""
        if all(g == self.grid for g in grid):
            return self.pos_embed
        native = self.pos_embed.reshape(1, *([self.grid] * self.spatial_dims), -1)
        native = native.movedim(-1, 1)  # [1, D, *grid]
        mode = "bicubic" if self.spatial_dims == 2 else "trilinear"
        resized = F.interpolate(native, size=grid, mode=mode, align_corners=False)
        return resized.flatten(2).transpose(1, 2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # [B, D, *grid]
        grid = tuple(x.shape[2:])
        x = x.flatten(2).transpose(1, 2)  # [B, N, D]
        x = x + self._pos_embed(grid).to(x.dtype)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1).to(x.dtype), x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[:, 0]

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """Parameters by depth, input first: embeddings, each block, the final norm (as BEiT's
        layer-wise lr decay)."""
        embed = [*self.patch_embed.parameters(), self.cls_token, self.pos_embed]
        return [embed] + [list(b.parameters()) for b in self.blocks] + [list(self.norm.parameters())]


@register_backbone
def vit_tiny(spatial_dims: int = 2, in_channels: int = 1, width: float = 1.0,
             img_size: int | None = 28, patch_size: int = 4) -> ViTBackbone:
    """ViT-Tiny-like: dim 192 x ``width`` (multiple of the 3 heads' 64), depth 6, 3 heads, patch 4."""
    dim = max(3, round(192 * width / 3)) * 3  # divisible by the number of heads
    return ViTBackbone(spatial_dims, in_channels, img_size or 28, patch_size, dim=dim, depth=6, heads=3)
