"""Fine-tuning a pretrained Self-supervised Mask R-CNN on segmentation labels (instance route).

Felfeliyan et al., CMIG 2023 (arXiv 2207.11191) fine-tune the whole pretrained detector, not only
its encoder. Semantic label maps become instance targets (one instance per connected component
per class) for torchvision's Mask R-CNN, and its detections are pasted back into a class map to
score them like any segmenter. ``load_pretrained_detector`` carries over every pretrained weight
whose name and shape fit (backbone, FPN, RPN, box and mask heads but the class-specific layers).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from medssl.eval.segmentation import random_flips
from medssl.models.maskrcnn import run_detector


def semantic_to_instances(label_map: torch.Tensor, num_classes: int) -> dict[str, torch.Tensor]:
    """Detection targets from a class map [H, W] (0 = background, classes 1..num_classes - 1).

    Returns boxes [n, 4] float xyxy (hi exclusive), labels [n] int64, masks [n, H, W] uint8: one
    instance per 8-connected component of each class.
    """
    labels_np = label_map.cpu().numpy()
    boxes, labels, masks = [], [], []
    for c in range(1, num_classes):
        components, _ = ndimage.label(labels_np == c, structure=np.ones((3, 3)))
        for k, sl in enumerate(ndimage.find_objects(components), start=1):
            if sl is None:
                continue
            boxes.append([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
            labels.append(c)
            masks.append(components == k)
    stacked = np.stack(masks) if masks else np.zeros((0, *labels_np.shape), bool)
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "masks": torch.from_numpy(stacked).to(torch.uint8)}


def instances_to_semantic(detections: Mapping[str, torch.Tensor], shape: tuple[int, int], num_classes: int,
                          score_threshold: float = 0.5) -> torch.Tensor:
    """Class map [H, W] int64 from one image's detections (labels [n], scores [n], masks [n, 1, H, W]).

    Detections scoring at least ``score_threshold`` paint their mask (> 0.5) with their label;
    higher scores are painted last, so they win where masks overlap.
    """
    out = torch.zeros(shape, dtype=torch.int64)
    scores, labels = detections["scores"], detections["labels"]
    masks = detections["masks"].reshape(len(labels), *shape)
    for i in torch.argsort(scores).tolist():
        if scores[i] >= score_threshold and 0 < labels[i] < num_classes:
            out[masks[i].cpu() > 0.5] = int(labels[i])
    return out


def _detector_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ``DistortionMaskRCNN`` state dict in the detector's names; a detector's one unchanged.

    The method saves the shared encoder once as ``backbone.*`` (``save_shared_once``), which is
    ``backbone.body.*`` in the detector; everything else is under ``detector.*``.
    """
    if not any(k.startswith("detector.") for k in state):
        return dict(state)
    out = {}
    for key, value in state.items():
        if key.startswith("detector."):
            out[key.removeprefix("detector.")] = value
        elif key.startswith("backbone."):
            out["backbone.body." + key.removeprefix("backbone.")] = value
        else:
            out[key] = value  # e.g. the generator state: reported as skipped
    return out


def load_pretrained_detector(finetune_model: nn.Module,
                             pretrain_state_dict: Mapping[str, torch.Tensor]) -> dict[str, list[str]]:
    """Copy every pretrained tensor whose name and shape match into ``finetune_model`` (a ``MaskRCNN``).

    ``pretrain_state_dict``: a ``DistortionMaskRCNN`` or detector state dict. Class-specific
    predictors (and the restoration branch) do not match when the class count differs and keep
    their fresh initialisation. Returns {"loaded": target keys, "skipped": pretrained keys not used}.
    """
    source = _detector_keys(pretrain_state_dict)
    target = finetune_model.state_dict()
    match = {k: v for k, v in source.items()
             if k in target and isinstance(v, torch.Tensor) and v.shape == target[k].shape}
    finetune_model.load_state_dict(match, strict=False)
    return {"loaded": sorted(match), "skipped": sorted(set(source) - set(match))}


class InstanceSegNet(nn.Module):
    """A torchvision Mask R-CNN fine-tuned on class maps, usable wherever a U-Net segmenter is.

    ``training_step`` takes {"image": float [B, C, H, W] in [0, 1], "label": uint8 [B, H, W]}
    (whole images, random flips), turns each label map into instances and returns the detector's
    summed losses. ``forward`` (eval) returns one-hot class scores [B, K, H, W] painted from the
    detections (``instances_to_semantic``), so sliding-window inference and the Dice metrics of
    the segmentation pipeline apply unchanged. ``core`` is the detector (the weights to keep).
    """

    def __init__(self, detector: nn.Module, num_classes: int, augment: bool = True,
                 score_threshold: float = 0.5) -> None:
        super().__init__()
        self.detector, self.num_classes = detector, num_classes
        self.augment, self.score_threshold = augment, score_threshold

    @property
    def core(self) -> nn.Module:
        return self.detector

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = batch["image"], batch["label"]
        if self.augment:
            x, y = random_flips(x, y)
        targets = [{k: v.to(x.device) for k, v in semantic_to_instances(label, self.num_classes).items()}
                   for label in y]
        losses = run_detector(self.detector, list(x.float()), targets)
        loss = sum(v.float() for v in losses.values())
        return {"loss": loss, **{k: v.detach().float() for k, v in losses.items()}}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        was_training = self.detector.training
        self.detector.eval()
        try:
            with torch.no_grad():
                dets = run_detector(self.detector, list(x.float()))
        finally:
            self.detector.train(was_training)
        shape, k = tuple(x.shape[2:]), self.num_classes
        maps = torch.stack([instances_to_semantic(d, shape, k, self.score_threshold) for d in dets])
        maps = maps.to(x.device)
        return nn.functional.one_hot(maps, self.num_classes).movedim(-1, 1).float()
