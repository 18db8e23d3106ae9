"""DINO: self-distillation of a momentum teacher into a student, with centering and sharpening.

Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021.
Two global views go through teacher and student; optional smaller local crops (multi-crop)
go through the student only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from medssl.losses import dino_loss, update_center
from medssl.models.heads import DINOHead
from medssl.models.utils import cosine_momentum, ema_update, linear_warmup, momentum_copy
from medssl.transforms.augment import ViewAugment


@dataclass
class DINOConfig:
    out_dim: int = 1024  # prototypes K (65536 in the paper; a small K suits small datasets)
    hidden_dim: int = 512  # head MLP width (2048 in the paper)
    bottleneck_dim: int = 128  # (256 in the paper)
    student_temp: float = 0.1
    teacher_temp: float = 0.07  # after the warm-up
    teacher_temp_start: float = 0.04
    teacher_temp_warmup: float = 0.3  # fraction of training over which the teacher temperature rises
    center_momentum: float = 0.9
    momentum: float = 0.99  # base teacher momentum, raised to 1 on a half cosine (0.996 in the paper)
    local_crops: int = 0  # multi-crop: number of small local crops per image (0 = off)
    local_size_ratio: float = 3 / 7  # local crop side / global side (96/224 in the paper); raised for
    #                                  CNNs whose deepest stride-2 stage would see a 1-px map
    local_crop_min: float = 0.05  # local crops keep this to local_crop_max of the image area/volume
    local_crop_max: float = 0.4


def _local_size(backbone: nn.Module, spatial_dims: int, size: int, ratio: float) -> int:
    """``ratio`` of the global side, raised until a CNN's last stride-2 stage sees >= 2 px.

    Why: on CPU (torch 2.14, oneDNN) a bf16 stride-2 convolution on a 1-px input writes garbage
    (sometimes NaN) into its weight gradient; e.g. 3D ResNet-10 on 12^3 local crops of 28^3 volumes.
    """
    local = max(4, round(size * ratio))
    if not hasattr(backbone, "stages"):  # a ViT interpolates its position embeddings to any size
        return local
    was_training = backbone.training
    backbone.eval()  # keep BatchNorm statistics untouched by the probe
    with torch.no_grad():
        while local < size:
            probe = torch.zeros(1, backbone.in_channels, *[local] * spatial_dims)
            if backbone.stages(probe)[-2].shape[-1] >= 2:
                break
            local += 1
    backbone.train(was_training)
    return local


class DINO(nn.Module):
    """DINO around any registered backbone; ``training_step`` takes {"image": [B, C, *S]}."""

    def __init__(self, backbone: nn.Module, augment: ViewAugment, cfg: DINOConfig) -> None:
        super().__init__()
        self.backbone, self.augment, self.cfg = backbone, augment, cfg
        self.head = DINOHead(backbone.num_features, cfg.out_dim, cfg.hidden_dim, cfg.bottleneck_dim)
        self.teacher_backbone = momentum_copy(backbone)
        self.teacher_head = momentum_copy(self.head)
        self.register_buffer("center", torch.zeros(1, cfg.out_dim))
        self.register_buffer("progress", torch.zeros(()))  # fraction of training done, for schedules
        self.local_augment = None
        if cfg.local_crops:
            local_size = _local_size(backbone, augment.spatial_dims, augment.size, cfg.local_size_ratio)
            local_cfg = replace(augment.cfg, crop_scale=(cfg.local_crop_min, cfg.local_crop_max))
            self.local_augment = ViewAugment(augment.spatial_dims, local_size, local_cfg)

    def teacher_temp(self) -> float:
        c = self.cfg
        progress = float(self.progress)
        return linear_warmup(c.teacher_temp_start, c.teacher_temp, progress, c.teacher_temp_warmup)

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["image"]
        globals_ = torch.cat([self.augment(x), self.augment(x)])  # [2B, C, *S]
        student = self.head(self.backbone(globals_)).chunk(2)
        if self.local_augment is not None:
            local = torch.cat([self.local_augment(x) for _ in range(self.cfg.local_crops)])
            student += self.head(self.backbone(local)).chunk(self.cfg.local_crops)
        with torch.no_grad():
            teacher = self.teacher_head(self.teacher_backbone(globals_)).chunk(2)
        temp = self.teacher_temp()
        loss = dino_loss(list(student), list(teacher), self.center, self.cfg.student_temp, temp)
        self.center.copy_(update_center(self.center, list(teacher), self.cfg.center_momentum, gather=True))
        return {"loss": loss, "teacher_temp": torch.tensor(temp, device=loss.device)}

    def after_step(self, step: int, total: int) -> None:
        self.progress.fill_((step + 1) / max(total, 1))
        m = cosine_momentum(self.cfg.momentum, step, total)
        ema_update(self.teacher_backbone, self.backbone, m)
        ema_update(self.teacher_head, self.head, m)
