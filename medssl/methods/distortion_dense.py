"""Dense distortion localisation: per-pixel/voxel distortion type and the restored image, 2D and 3D.

The dense counterpart of the Self-supervised Mask R-CNN (Felfeliyan et al., CMIG 2023, arXiv
2207.11191) for volumes, where a detector is impractical: random boxes get random distortions
(``distort_regions``); a U-Net over the registered backbone predicts, for every voxel, which
distortion hit it (0 = none; localisation and type in one map) and the original intensities.
Loss = ``type_weight`` x cross-entropy(type map) + ``restore_weight`` x reconstruction loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from medssl.errors import MedsslError
from medssl.losses import reconstruction_loss
from medssl.methods._common import GeneratorState, new_generator, save_shared_once
from medssl.models.unet import UNet
from medssl.transforms.augment import ViewAugment, random_crop
from medssl.transforms.corruptions.regions import DISTORTION_TYPES, DistortedRegions, RegionArgs


@dataclass
class DistortionDenseConfig(RegionArgs):  # + max_regions, min_frac, max_frac, types, restore_loss (mse)
    type_weight: float = 1.0
    restore_weight: float = 1.0
    augment: bool = False  # view augmentation before distorting
    crop: bool = True  # no augment: random data.size-sided crops of larger (3D) inputs


class DistortionDense(GeneratorState, nn.Module):
    """Dense distortion localisation + restoration; ``training_step`` takes {"image": [B, C, *S]}.

    The U-Net's output channels are ``K + 1`` type logits then ``C`` restored channels (sigmoid).
    """

    def __init__(self, backbone: nn.Module, augment: ViewAugment, cfg: DistortionDenseConfig) -> None:
        super().__init__()
        if not hasattr(backbone, "stages"):
            raise MedsslError("distortion_dense needs a CNN backbone with stages() for its U-Net decoder "
                              f"(e.g. resnet18_small); got {type(backbone).__name__}")
        cfg.check("distortion_dense")
        self.backbone, self.cfg = backbone, cfg
        self.num_types = len(DISTORTION_TYPES) + 1  # labels index all types, whatever subset is used
        self.net = UNet(backbone, self.num_types + backbone.in_channels)
        self.augment = augment if cfg.augment else None
        self.crop = augment.size if cfg.crop else None
        self.generator = new_generator()
        save_shared_once(self)

    def distort(self, x: torch.Tensor) -> DistortedRegions:
        return self.cfg.distort(x, self.generator)

    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(type logits [B, K + 1, *S], restored image [B, C, *S] in [0, 1]) for a distorted x."""
        out = self.net(x).float()
        return out[:, :self.num_types], torch.sigmoid(out[:, self.num_types:])

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["image"]
        x = self.augment(x) if self.augment is not None else random_crop(x, self.crop, self.generator)
        d = self.distort(x)
        logits, restored = self.predict(d.input)
        type_loss = F.cross_entropy(logits, d.type_map)
        restore = reconstruction_loss(restored, d.target, kind=self.cfg.restore_loss)
        with torch.no_grad():
            pred = logits.argmax(dim=1)
            inside = d.type_map > 0
            hit = ((pred > 0) & inside).sum() / ((pred > 0) | inside).sum().clamp(min=1)
            type_acc = (pred[inside] == d.type_map[inside]).float().mean() if inside.any() else hit * 0
        loss = self.cfg.type_weight * type_loss + self.cfg.restore_weight * restore
        return {"loss": loss, "type_ce": type_loss.detach(), "restore": restore.detach(),
                "region_iou": hit, "type_acc": type_acc}
