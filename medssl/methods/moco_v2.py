"""MoCo v2: a momentum encoder makes keys, a queue of past keys supplies the negatives.

He et al., "Momentum Contrast for Unsupervised Visual Representation Learning", CVPR 2020;
Chen et al., "Improved Baselines with Momentum Contrastive Learning", arXiv 2003.04297 (MLP head,
stronger augmentation, temperature 0.2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from medssl.losses import moco_infonce
from medssl.losses.distributed import gather
from medssl.models.heads import projection_mlp
from medssl.models.utils import ema_update, momentum_copy
from medssl.transforms.augment import ViewAugment, two_views


@dataclass
class MoCoV2Config:
    temperature: float = 0.2
    queue_size: int = 512  # negatives; MoCo uses 65536, but a queue near the train-set size fills with
    #                        earlier views of the current images (false negatives) on small datasets
    momentum: float = 0.99  # constant key-encoder momentum (0.999 in the paper's 200-epoch ImageNet runs)
    proj_hidden_dim: int = 512  # MoCo v2 MLP head: Linear -> ReLU -> Linear, no BatchNorm
    proj_dim: int = 128
    symmetric: bool = True  # both views serve as queries (the paper's loss is one-sided)


class MoCoV2(nn.Module):
    """MoCo v2 around any registered backbone; ``training_step`` takes {"image": [B, C, *S]}.

    Batch-norm shuffling is not needed in a single process, where BatchNorm already sees the whole
    batch; with several processes the keys are gathered before they enter the queue.
    """

    def __init__(self, backbone: nn.Module, augment: ViewAugment, cfg: MoCoV2Config) -> None:
        super().__init__()
        self.backbone, self.augment, self.cfg = backbone, augment, cfg
        self.projector = projection_mlp(backbone.num_features, cfg.proj_hidden_dim, cfg.proj_dim,
                                        batch_norm=False)
        self.momentum_backbone = momentum_copy(backbone)
        self.momentum_projector = momentum_copy(self.projector)
        self.register_buffer("queue", F.normalize(torch.randn(cfg.queue_size, cfg.proj_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        keys = F.normalize(gather(keys.detach()).float(), dim=1)[: self.cfg.queue_size]
        idx = (self.queue_ptr + torch.arange(len(keys), device=keys.device)) % self.cfg.queue_size
        self.queue[idx] = keys
        self.queue_ptr.copy_((self.queue_ptr + len(keys)) % self.cfg.queue_size)

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["image"]
        views = two_views(self.augment, x)  # [2B, C, *S]
        q1, q2 = self.projector(self.backbone(views)).chunk(2)
        with torch.no_grad():
            k1, k2 = self.momentum_projector(self.momentum_backbone(views)).chunk(2)
        t, queue = self.cfg.temperature, self.queue.clone()  # enqueueing below must not touch the graph
        loss = moco_infonce(q1, k2, queue, t)
        if self.cfg.symmetric:
            loss = (loss + moco_infonce(q2, k1, queue, t)) / 2
        self._enqueue(k2)
        return {"loss": loss}

    def after_step(self, step: int, total: int) -> None:
        ema_update(self.momentum_backbone, self.backbone, self.cfg.momentum)
        ema_update(self.momentum_projector, self.projector, self.cfg.momentum)
