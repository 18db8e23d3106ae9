"""Self-supervised Mask R-CNN: detect, classify, mask and restore distorted regions (2D).

Felfeliyan et al., "Self-supervised-RCNN for medical image segmentation with limited data
annotation", CMIG 2023 (arXiv 2207.11191). Random boxes of an unlabeled image get random
distortions (``distort_regions``); torchvision's Mask R-CNN over the registered backbone (+ FPN)
learns each region's distortion type (class), box and mask, and an added head restores the
original pixels inside it. Loss = the five torchvision terms + ``restore_weight`` x L1/MSE.
For volumes use ``distortion_dense`` (its dense U-Net counterpart).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from medssl.errors import MedsslError
from medssl.methods._common import GeneratorState, new_generator, save_shared_once
from medssl.models.maskrcnn import build_mask_rcnn, run_detector
from medssl.transforms.augment import ViewAugment
from medssl.transforms.corruptions.regions import DISTORTION_TYPES, DistortedRegions, RegionArgs, xyxy_boxes


@dataclass
class DistortionMaskRCNNConfig(RegionArgs):  # + max_regions, min_frac, max_frac, types
    restore_loss: str = "l1"  # "l1" or "mse"
    restore_weight: float = 1.0
    augment: bool = False  # view augmentation before distorting
    fpn_channels: int = 64  # FPN and head width
    image_mean: float = 0.5  # the detector's input normalisation, the same for every channel
    image_std: float = 0.25


def region_targets(d: DistortedRegions) -> list[dict[str, torch.Tensor]]:
    """torchvision detection targets per image from the valid regions of ``d`` (2D).

    boxes [n, 4] float xyxy, labels [n] int64 (distortion type, 1..K), masks [n, H, W] uint8,
    original [C, H, W] (the undistorted image, the restoration target).
    """
    boxes = xyxy_boxes(d.boxes)
    return [{"boxes": boxes[i][v], "labels": d.labels[i][v], "masks": d.masks[i][v].to(torch.uint8),
             "original": d.target[i].float()} for i, v in enumerate(d.valid)]


class DistortionMaskRCNN(GeneratorState, nn.Module):
    """Self-supervised Mask R-CNN pretext; ``training_step`` takes {"image": [B, C, H, W]} in [0, 1].

    ``backbone`` is the registered backbone (the pretrained encoder); ``detector`` is torchvision's
    ``MaskRCNN`` whose ``backbone.body`` is that same module, with ``K + 1`` classes (K = 6 types).
    """

    def __init__(self, backbone: nn.Module, augment: ViewAugment, cfg: DistortionMaskRCNNConfig) -> None:
        super().__init__()
        if getattr(backbone, "spatial_dims", 2) != 2:
            raise MedsslError("distortion_maskrcnn is 2D only (torchvision Mask R-CNN); "
                              "use distortion_dense for volumes")
        if not hasattr(backbone, "stages"):
            raise MedsslError("distortion_maskrcnn needs a CNN backbone with stages() for its FPN "
                              f"(e.g. resnet18_small); got {type(backbone).__name__}")
        cfg.check("distortion_maskrcnn")
        self.backbone, self.cfg = backbone, cfg  # registered first: its keys win in save_shared_once
        c = backbone.in_channels
        self.detector = build_mask_rcnn(
            backbone, len(DISTORTION_TYPES) + 1, augment.size, restoration=True,
            fpn_channels=cfg.fpn_channels, image_mean=[cfg.image_mean] * c, image_std=[cfg.image_std] * c,
            restore_weight=cfg.restore_weight, restore_loss=cfg.restore_loss)
        self.augment = augment if cfg.augment else None
        self.generator = new_generator()
        save_shared_once(self)

    def distort(self, x: torch.Tensor) -> DistortedRegions:
        return self.cfg.distort(x, self.generator)

    def _run(self, images: list[torch.Tensor], targets: list[dict] | None = None) -> object:
        return run_detector(self.detector, images, targets)

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["image"]
        if self.augment is not None:
            x = self.augment(x)
        with torch.autocast(x.device.type, enabled=False):  # distortions and targets in fp32
            d = self.distort(x.float())
        losses = {k: v.float() for k, v in self._run(list(d.input), region_targets(d)).items()}
        return {"loss": sum(losses.values()), **{k: v.detach() for k, v in losses.items()}}

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Detections for (distorted) images x [B, C, H, W] in [0, 1], evaluated in eval mode.

        Per image: boxes [n, 4] xyxy, labels [n] (distortion type), scores [n], masks [n, 1, H, W]
        (probabilities) and restored [n, C, 28, 28] (the original pixels inside each box).
        """
        was_training = self.detector.training
        self.detector.eval()
        try:
            return self._run(list(x.float()))
        finally:
            self.detector.train(was_training)
