"""A small torchvision Mask R-CNN over a registered backbone, with an optional restoration branch.

Felfeliyan et al., "Self-supervised-RCNN for medical image segmentation with limited data
annotation", CMIG 2023 (arXiv 2207.11191): Mask R-CNN classifies, boxes and masks distorted
regions, and an added head restores the original pixels inside each region. Everything but the
restoration branch is torchvision's (detector, FPN, RPN, heads, losses); sizes are cut down for
small grey images on a CPU.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign, roi_align
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from medssl.models.conv_guard import guard_convs

FEATURES = ["0", "1", "2", "3"]  # the four backbone stages; FPN adds "pool" (used by the RPN only)
RESTORE_SIZE = 28  # restored patch side M, the mask head's output size


class BackboneFPN(nn.Module):
    """A registered CNN backbone (``stages``) + torchvision's FPN, like torchvision's ``BackboneWithFPN``.

    x [B, C, H, W] -> OrderedDict "0".."3" (stage strides, e.g. 1-8 for resnet18_small) + "pool",
    each [B, out_channels, h, w]. ``body`` is the registered backbone itself, so its keys stay plain.

    ``autocast_dtype``: when set, the backbone and FPN run under autocast with that dtype and
    return fp32 features, while the caller runs the detection geometry in fp32 (see
    ``DistortionMaskRCNN._run``).
    """

    def __init__(self, backbone: nn.Module, out_channels: int = 64) -> None:
        super().__init__()
        self.body = backbone
        self.fpn = FeaturePyramidNetwork(list(backbone.feature_channels), out_channels,
                                         extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels
        self.autocast_dtype: torch.dtype | None = None

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        if self.autocast_dtype is None:
            return self.fpn(OrderedDict(zip(FEATURES, self.body.stages(x), strict=True)))
        with torch.autocast(x.device.type, dtype=self.autocast_dtype):
            feats = self.fpn(OrderedDict(zip(FEATURES, self.body.stages(x), strict=True)))
        return OrderedDict((k, v.float()) for k, v in feats.items())


class _RecordingRoIPool(nn.Module):
    """The mask branch's ``MultiScaleRoIAlign``, remembering its boxes and output for the restoration branch.

    Why: torchvision's ``RoIHeads.forward`` picks the positive proposals (training) or detections
    (eval) for the mask branch internally and does not return them; recording the call lets the
    restoration branch use exactly the same regions without copying that forward. The branch also
    reuses the pooled features (it would run the same 14x14 RoIAlign), saving one of the three
    RoIAlign passes, whose backward is the costliest op of a CPU step here.
    """

    def __init__(self, pool: MultiScaleRoIAlign) -> None:
        super().__init__()
        self.pool = pool
        self.last: tuple | None = None

    def forward(self, features: dict[str, torch.Tensor], boxes: list[torch.Tensor],
                image_shapes: list[tuple[int, int]]) -> torch.Tensor:
        pooled = self.pool(features, boxes, image_shapes)
        self.last = (pooled, boxes, image_shapes)
        return pooled

    def pop(self) -> tuple:
        last, self.last = self.last, None  # do not keep the graph alive after the step
        return last


def restoration_targets(boxes: list[torch.Tensor], originals: list[torch.Tensor],
                        image_shapes: list[tuple[int, int]], size: int = RESTORE_SIZE) -> torch.Tensor:
    """[N, C, size, size] original pixels under each box, like torchvision's mask targets.

    boxes: per image [n_i, 4] xyxy in the detector's (resized) image frame of ``image_shapes``;
    originals: per image [C, H, W] in [0, 1] at the input resolution (the transform does not
    resize them, so boxes are scaled back to it).
    """
    out = []
    for b, img, (h, w) in zip(boxes, originals, image_shapes, strict=True):
        scale = b.new_tensor([img.shape[-1] / w, img.shape[-2] / h] * 2)
        out.append(roi_align(img[None].float(), [(b * scale).float()], (size, size), 1.0))
    return torch.cat(out)


def restoration_loss(restored: torch.Tensor, boxes: list[torch.Tensor], originals: list[torch.Tensor],
                     image_shapes: list[tuple[int, int]], kind: str = "l1") -> torch.Tensor:
    """Mean L1 or MSE (fp32) between restored patches [N, C, M, M] and the originals under ``boxes``."""
    target = restoration_targets(boxes, originals, image_shapes, restored.shape[-1])
    if target.numel() == 0:
        return restored.sum() * 0.0
    loss = F.l1_loss if kind == "l1" else F.mse_loss
    return loss(restored.float(), target)


class RestorationRoIHeads(RoIHeads):
    """torchvision's Mask R-CNN ``RoIHeads`` + a branch restoring the original pixels per region.

    The branch (the mask branch's RoIAlign 14x14 -> ``MaskRCNNHeads`` convs -> ``MaskRCNNPredictor``
    with C outputs -> sigmoid) sees the mask branch's regions: the positive proposals in training,
    where it adds ``loss_restore`` = ``restore_weight`` x L1/MSE against ``roi_align`` of
    ``target["original"]`` ([C, H, W] in [0, 1]); the detections in eval, where each result gets
    "restored" [n, C, M, M].
    """

    def __init__(self, *args, restore_head: nn.Module, restore_predictor: nn.Module,
                 restore_weight: float = 1.0, restore_loss: str = "l1", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if restore_loss not in ("l1", "mse"):
            raise ValueError(f"restore_loss must be l1 or mse, got '{restore_loss}'")
        self.mask_roi_pool = _RecordingRoIPool(self.mask_roi_pool)
        self.restore_head = restore_head
        self.restore_predictor = restore_predictor
        self.restore_weight, self.restore_loss = restore_weight, restore_loss

    def restore(self, features: dict[str, torch.Tensor], boxes: list[torch.Tensor],
                image_shapes: list[tuple[int, int]]) -> torch.Tensor:
        """[N, C, M, M] restored pixels in [0, 1] for the boxes (xyxy, per image) of the batch."""
        return self.restore_pooled(self.mask_roi_pool.pool(features, boxes, image_shapes))

    def restore_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """[N, C, M, M] restored pixels in [0, 1] from RoI features [N, F, 14, 14]."""
        return torch.sigmoid(self.restore_predictor(self.restore_head(pooled)).float())

    def forward(self, features: dict[str, torch.Tensor], proposals: list[torch.Tensor],
                image_shapes: list[tuple[int, int]], targets: list[dict[str, torch.Tensor]] | None = None,
                ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        if self.training and (targets is None or any("original" not in t for t in targets)):
            raise ValueError("RestorationRoIHeads needs target['original'] ([C, H, W]) in training")
        result, losses = super().forward(features, proposals, image_shapes, targets)
        pooled, boxes, shapes = self.mask_roi_pool.pop()
        restored = self.restore_pooled(pooled)
        if self.training:
            originals = [t["original"] for t in targets]
            loss = restoration_loss(restored, boxes, originals, shapes, self.restore_loss)
            losses["loss_restore"] = self.restore_weight * loss
        else:
            for r, patches in zip(result, restored.split([len(b) for b in boxes]), strict=True):
                r["restored"] = patches
        return result, losses


def default_anchor_sizes(image_size: int, levels: int = 5) -> tuple[tuple[int, ...], ...]:
    """One anchor size per FPN level, geometric from 8% to 50% of the image side.

    Why not torchvision's 32-512 px: distorted regions are 15-40% of a 64-128 px image; anchors
    of the same scale (x aspect ratios 0.5-2) let the RPN match every region.
    """
    return tuple((max(2, round(image_size * 0.08 * (0.5 / 0.08) ** (i / (levels - 1)))),)
                 for i in range(levels))


def build_mask_rcnn(backbone: nn.Module, num_classes: int, image_size: int, restoration: bool = True, *,
                    fpn_channels: int = 64, representation_size: int = 256,
                    image_mean: list[float] | None = None, image_std: list[float] | None = None,
                    anchor_sizes: tuple[tuple[int, ...], ...] | None = None,
                    restore_weight: float = 1.0, restore_loss: str = "l1", **kwargs) -> MaskRCNN:
    """torchvision ``MaskRCNN`` over ``BackboneFPN(backbone)``, sized for small grey images on a CPU.

    num_classes includes the background (distortion pretext: K + 1). Images are [C, H, W] in
    [0, 1], kept at ``image_size`` (no upscaling to 800 px) and normalised with one mean/std per
    input channel (default 0.5/0.25, not ImageNet RGB). Heads are narrow (``fpn_channels`` wide),
    RPN/RoI sampling is cut (200/100 proposals, 64 RoIs per image); ``kwargs`` override any
    ``MaskRCNN`` argument. ``restoration`` adds the ``RestorationRoIHeads`` branch.
    """
    c = backbone.in_channels
    body = BackboneFPN(backbone, fpn_channels)
    sizes = anchor_sizes or default_anchor_sizes(image_size, len(backbone.feature_channels) + 1)
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    box_pool = MultiScaleRoIAlign(FEATURES, 7, 2)
    settings = dict(
        min_size=image_size, max_size=image_size,
        image_mean=image_mean or [0.5] * c, image_std=image_std or [0.25] * c,
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100,
        rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=100,
        rpn_batch_size_per_image=128, box_batch_size_per_image=64, box_detections_per_img=20,
        box_roi_pool=box_pool, box_head=TwoMLPHead(fpn_channels * 7 ** 2, representation_size),
        box_predictor=FastRCNNPredictor(representation_size, num_classes),
        mask_roi_pool=MultiScaleRoIAlign(FEATURES, 14, 2),
        mask_head=MaskRCNNHeads(fpn_channels, (fpn_channels,) * 4, 1),
        mask_predictor=MaskRCNNPredictor(fpn_channels, fpn_channels, num_classes),
    )
    model = MaskRCNN(body, **{**settings, **kwargs})
    if restoration:
        # MaskRCNN builds a plain RoIHeads; rebuild it as the subclass from the same parts and settings.
        r = model.roi_heads
        model.roi_heads = RestorationRoIHeads(
            r.box_roi_pool, r.box_head, r.box_predictor,
            r.proposal_matcher.high_threshold, r.proposal_matcher.low_threshold,
            r.fg_bg_sampler.batch_size_per_image, r.fg_bg_sampler.positive_fraction,
            r.box_coder.weights, r.score_thresh, r.nms_thresh, r.detections_per_img,
            mask_roi_pool=r.mask_roi_pool, mask_head=r.mask_head, mask_predictor=r.mask_predictor,
            restore_head=MaskRCNNHeads(fpn_channels, (fpn_channels,) * 4, 1),
            restore_predictor=MaskRCNNPredictor(fpn_channels, fpn_channels, c),
            restore_weight=restore_weight, restore_loss=restore_loss,
        )
    return guard_convs(model)  # FPN, RPN and mask/restoration heads (oneDNN's tiny-input bug)


def run_detector(detector: MaskRCNN, images: list[torch.Tensor], targets: list[dict] | None = None) -> object:
    """``detector(images, targets)`` with only the backbone + FPN under the caller's autocast.

    Why: under CPU bf16 autocast torchvision decodes the RPN's bf16 box deltas into bf16
    proposals and casts the ground-truth boxes to them (0.25-1 px steps at 64-256 px), so the
    box matching, regression targets and RoI coordinates lose precision. The backbone + FPN
    (most of the compute) keep bf16; anchors, boxes, heads and losses run in fp32, which costs
    ~15% of a step at 64 px.
    """
    body, device = detector.backbone, images[0].device.type
    body.autocast_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
    try:
        with torch.autocast(device, enabled=False):
            return detector(images, targets)
    finally:
        body.autocast_dtype = None
