"""Masked autoencoder: a ViT encodes the visible patches only, a light decoder predicts the rest.

He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022. 2D and 3D through the
registered ViT (``vit_tiny``): its patch embedding, position embeddings, CLS token, blocks and
norm are used directly, so the pretrained encoder is exactly ``self.backbone``. The loss is the
MSE on masked patches only, optionally on per-patch normalised pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from monai.networks.blocks import TransformerBlock
from torch import nn

from medssl.errors import MedsslError
from medssl.losses import masked_patch_loss
from medssl.methods._common import GeneratorState, new_generator
from medssl.transforms.augment import ViewAugment
from medssl.transforms.corruptions import Corrupted, patchify, random_patch_mask, unpatchify

_VIT_PARTS = ("patch_embed", "pos_embed", "cls_token", "blocks", "norm", "patch_size", "grid")


@dataclass
class MAEConfig:
    mask_ratio: float = 0.75  # fraction of patches masked (paper: 0.75; 0.4 reported best on X-ray/CT)
    decoder_dim: int = 128  # 512 in the paper, for ViT-L
    decoder_depth: int = 2  # 8 in the paper
    decoder_heads: int = 4
    norm_pix: bool = True  # per-patch normalised pixel targets (the paper's better variant)
    augment: bool = True  # view augmentation before masking (the paper: random resized crop + flip)


class MAE(GeneratorState, nn.Module):
    """MAE around a registered ViT backbone; ``training_step`` takes {"image": [B, C, *S]}."""

    def __init__(self, backbone: nn.Module, augment: ViewAugment, cfg: MAEConfig) -> None:
        super().__init__()
        if not all(hasattr(backbone, part) for part in _VIT_PARTS):
            raise MedsslError(f"mae needs a ViT backbone (e.g. model.backbone=vit_tiny); "
                              f"got {type(backbone).__name__}")
        if not 0 < cfg.mask_ratio < 1:
            raise MedsslError(f"mae: mask_ratio must be in (0, 1), got {cfg.mask_ratio}")
        self.backbone, self.cfg = backbone, cfg
        self.augment = augment if cfg.augment else None
        dims, width, patch = backbone.spatial_dims, cfg.decoder_dim, backbone.patch_size
        self.decoder_embed = nn.Linear(backbone.num_features, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        # learned decoder position embeddings (the paper uses fixed sin-cos ones; equivalent here)
        self.decoder_pos = nn.Parameter(torch.zeros(1, backbone.grid ** dims, width))
        self.decoder = nn.ModuleList(
            TransformerBlock(width, 4 * width, cfg.decoder_heads, qkv_bias=True, use_flash_attention=True)
            for _ in range(cfg.decoder_depth))
        for block in self.decoder:  # MONAI builds it even without cross-attention: frozen, as DDP needs
            block.norm_cross_attn.requires_grad_(False)  # every trainable parameter used (same state dict)
        self.decoder_norm = nn.LayerNorm(width)
        self.decoder_pred = nn.Linear(width, patch ** dims * backbone.in_channels)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.decoder_pos, std=0.02)
        self.generator = new_generator()

    def corrupt(self, x: torch.Tensor) -> Corrupted:
        """meta ``mask`` [B, N], ``ids_keep`` [B, N_keep], ``ids_restore`` [B, N]."""
        return random_patch_mask(x, self.generator, self.backbone.patch_size, self.cfg.mask_ratio)

    def encode(self, x: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """x [B, C, *S], visible patch ids [B, K] -> [B, 1 + K, D] (CLS first)."""
        vit = self.backbone
        tokens = vit.patch_embed(x).flatten(2).transpose(1, 2)  # [B, N, D]
        if tokens.shape[1] != vit.pos_embed.shape[1]:
            raise MedsslError(f"mae: input {tuple(x.shape[2:])} does not match the ViT's "
                              f"{vit.grid * vit.patch_size} px position embeddings")
        tokens = tokens + vit.pos_embed.to(tokens.dtype)
        tokens = tokens.gather(1, ids_keep[..., None].expand(-1, -1, tokens.shape[-1]))
        tokens = torch.cat([vit.cls_token.expand(len(tokens), -1, -1).to(tokens.dtype), tokens], dim=1)
        for block in vit.blocks:
            tokens = block(tokens)
        return vit.norm(tokens)

    def decode(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """[B, 1 + K, D] -> predicted patches [B, N, patch^d * C] for every position."""
        y = self.decoder_embed(latent)
        b, n = ids_restore.shape
        # cast to the activation dtype: under bf16 autocast the Linear output is bf16 while the
        # parameters stay fp32 (the MONAI MAE dtype failure noted in CALIBRATION.md)
        masked = self.mask_token.to(y.dtype).expand(b, n + 1 - y.shape[1], -1)
        patches = torch.cat([y[:, 1:], masked], dim=1)
        patches = patches.gather(1, ids_restore[..., None].expand(-1, -1, y.shape[-1]))
        y = torch.cat([y[:, :1], patches + self.decoder_pos.to(y.dtype)], dim=1)
        for block in self.decoder:
            y = block(y)
        return self.decoder_pred(self.decoder_norm(y))[:, 1:]

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["image"]
        if self.augment is not None:
            x = self.augment(x)
        c = self.corrupt(x)
        pred = self.decode(self.encode(x, c.meta["ids_keep"]), c.meta["ids_restore"])
        target = patchify(x, self.backbone.patch_size)
        return {"loss": masked_patch_loss(pred, target, c.meta["mask"], self.cfg.norm_pix)}

    @torch.no_grad()
    def restore(self, corrupted: Corrupted) -> torch.Tensor:
        """Visible patches as given, masked ones predicted: [B, C, *S] in [0, 1].

        With ``norm_pix`` the prediction is de-normalised with the true patch mean and std (as
        the MAE visualisation does), so only the structure inside a patch is the model's.
        """
        x, meta, p = corrupted.target, corrupted.meta, self.backbone.patch_size
        pred = self.decode(self.encode(x, meta["ids_keep"]), meta["ids_restore"]).float()
        target = patchify(x, p).float()
        if self.cfg.norm_pix:
            pred = pred * (target.var(dim=-1, keepdim=True) + 1e-6).sqrt() + target.mean(dim=-1, keepdim=True)
        patches = torch.where(meta["mask"][..., None], pred, target)
        grid = tuple(s // p for s in x.shape[2:])
        return unpatchify(patches, p, x.shape[1], grid).clamp(0, 1)
