"""Segmentation fine-tuning and evaluation, 2D and 3D.

Training: random patches of the padded cases, random mirroring on every axis and mild intensity
jitter, MONAI's Dice + cross-entropy loss, driven by :func:`medssl.engine.fit`; the model is
selected on validation Dice. Inference: ``monai.inferers.sliding_window_inference`` over each case
at its native shape. Metrics: MONAI's Dice, IoU and 95th-percentile Hausdorff distance per
foreground class.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric, HausdorffDistanceMetric, MeanIoU
from torch import nn

from medssl.data.loaders import TensorBatches, steps_per_epoch
from medssl.engine import fit
from medssl.engine.checkpoint import save_weights
from medssl.engine.precision import autocast, model_device
from medssl.engine.trainer import planned_epochs
from medssl.errors import MedsslError
from medssl.eval.finetune import layer_lr_scales
from medssl.eval.selection import BestEpoch
from medssl.models.unet import UNet
from medssl.transforms.augment import AugmentConfig, IntensityJitter


def random_patches(x: torch.Tensor, y: torch.Tensor,
                   crop: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """One random ``crop`` patch per sample (zero-padded first where the case is smaller).

    x: [B, C, *S] float, y: [B, *S] -> ([B, C, *crop], [B, *crop]). Offsets come from torch's
    global generator (seeded per run). A per-sample slice loop: MONAI's RandSpatialCrop works on
    one unbatched sample per call, which is no shorter.
    """
    pad = [max(0, c - s) for c, s in zip(crop, x.shape[2:], strict=True)]
    if any(pad):
        widths = [w for p in reversed(pad) for w in (p // 2, p - p // 2)]
        x, y = F.pad(x, widths), F.pad(y, widths)
    starts = [torch.randint(0, s - c + 1, (x.shape[0],)) for s, c in zip(x.shape[2:], crop, strict=True)]
    xs, ys = [], []
    for b in range(x.shape[0]):
        region = tuple(slice(int(st[b]), int(st[b]) + c) for st, c in zip(starts, crop, strict=True))
        xs.append(x[(b, slice(None), *region)])
        ys.append(y[(b, *region)])
    return torch.stack(xs), torch.stack(ys)


def random_flips(x: torch.Tensor, y: torch.Tensor, p: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror each sample along each spatial axis with probability ``p`` (image and mask alike)."""
    for d in range(2, x.dim()):
        flip = torch.rand(x.shape[0], device=x.device) < p
        x = torch.where(flip.view(-1, *[1] * (x.dim() - 1)), x.flip(d), x)
        y = torch.where(flip.view(-1, *[1] * (y.dim() - 1)), y.flip(d - 1), y)
    return x, y


class SegmentationNet(nn.Module):
    """A :class:`UNet` with patch sampling, augmentation and Dice-CE loss for :func:`fit`.

    Args:
        unet: the encoder-decoder (encoder = ``unet.backbone``).
        crop: training patch size per spatial axis.
        augment: random mirroring + mild intensity jitter.
        freeze_encoder: train the decoder only (the encoder also stays in eval mode: BatchNorm
            statistics frozen).
        encoder_lr_scale: encoder learning rate = lr * scale (a parameter group of its own, from
            ``param_groups``, which ``fit`` reads).
        encoder_start: the encoder's learning rate is 0 for this many steps (decoder warm-up: the
            randomly initialised decoder learns on fixed pretrained features first, the dense
            analogue of LP-FT; ``train_segmentation`` sets it from a share of the planned steps).

    Shapes: ``forward``: [B, C, *S] -> logits [B, K, *S]; ``training_step`` takes
    {"image": float [B, C, *S] in [0, 1], "label": uint8 [B, *S]}.
    """

    def __init__(self, unet: UNet, crop: Sequence[int], augment: bool = True,
                 freeze_encoder: bool = False, encoder_lr_scale: float = 1.0) -> None:
        super().__init__()
        if not 0 < encoder_lr_scale <= 1:
            raise MedsslError(f"encoder_lr_scale must be in (0, 1], got {encoder_lr_scale}")
        self.unet, self.crop = unet, tuple(crop)
        self.freeze_encoder, self.encoder_lr_scale = freeze_encoder, encoder_lr_scale
        self.encoder_start = 0
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True)
        cfg = AugmentConfig(brightness=0.1, contrast=0.15, gamma=(0.8, 1.25), noise_p=0.15,
                            noise_std=0.03, p_intensity=0.5)
        self.intensity = IntensityJitter(cfg) if augment else None
        self.augment = augment
        if freeze_encoder:
            unet.backbone.requires_grad_(False)

    @property
    def core(self) -> nn.Module:
        """The module whose weights are the result (the U-Net)."""
        return self.unet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unet(x)

    def train(self, mode: bool = True) -> SegmentationNet:
        super().train(mode)
        if self.freeze_encoder:
            self.unet.backbone.eval()
        return self

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = random_patches(batch["image"], batch["label"], self.crop)
        if self.augment:
            x, y = random_flips(x, y)
            with torch.no_grad():
                x = self.intensity(x)
        logits = self.unet(x.contiguous()).float()
        return {"loss": self.loss(logits, y[:, None].long())}

    def param_groups(self) -> list[dict]:
        """The decoder at the full learning rate, the encoder at ``encoder_lr_scale`` times it from
        step ``encoder_start`` on."""
        encoder = {id(p) for p in self.unet.backbone.parameters()}
        rest = [p for p in self.parameters() if id(p) not in encoder]
        return [{"params": rest, "lr_scale": 1.0},
                *({**g, "start_step": self.encoder_start}
                  for g in layer_lr_scales(self.unet.backbone, self.encoder_lr_scale))]


@torch.no_grad()
def predict_case(model: nn.Module, image: np.ndarray, roi: Sequence[int], overlap: float,
                 precision: torch.dtype | None = None) -> np.ndarray:
    """Sliding-window argmax prediction of one case on the model's device: uint8 image ``[*S]`` ->
    uint8 labels ``[*S]``."""
    model.eval()
    device = model_device(model)
    x = torch.from_numpy(np.ascontiguousarray(image)).to(device).float().div_(255)[None, None]
    with autocast(device, precision):
        logits = sliding_window_inference(x, list(roi), sw_batch_size=4, predictor=model,
                                          overlap=overlap, mode="gaussian")
    return logits.float().argmax(1)[0].to(torch.uint8).cpu().numpy()


def case_metrics(pred: np.ndarray, target: np.ndarray, num_classes: int,
                 spacing: Sequence[float] | None = None, hd95: bool = True) -> dict[str, np.ndarray]:
    """Dice, IoU and HD95 per foreground class for one case.

    Args:
        pred, target: integer class maps ``[*S]``.
        num_classes: classes including background (0).
        spacing: voxel spacing for HD95 (mm); None = voxel units.
        hd95: compute HD95 (the slowest of the three; skipped for model selection).

    Returns:
        {"dice", "iou", "hd95"} -> float arrays ``[K-1]``. Empty-empty rule: where neither map
        has the class, all three are NaN (the case is left out of NaN-aware means). Where only
        one map has it (a missed structure or a false positive), Dice and IoU are 0 and HD95 is
        the image diagonal (MONAI gives NaN for both, which would hide the error).
    """
    p = F.one_hot(torch.as_tensor(pred, dtype=torch.long), num_classes).movedim(-1, 0)[None].float()
    g = F.one_hot(torch.as_tensor(target, dtype=torch.long), num_classes).movedim(-1, 0)[None].float()
    in_p, in_g = p[0, 1:].flatten(1).any(1).numpy(), g[0, 1:].flatten(1).any(1).numpy()
    # ignore_empty=False scores an empty target 1.0 (empty-empty) or 0.0 (false positive)
    dice = DiceMetric(include_background=False, reduction="none", ignore_empty=False)(p, g)[0].numpy()
    iou = MeanIoU(include_background=False, reduction="none", ignore_empty=False)(p, g)[0].numpy()
    dice, iou = (np.where(in_p | in_g, m, np.nan) for m in (dice, iou))
    if not hd95:
        return {"dice": dice.astype(float), "iou": iou.astype(float)}
    spacing = list(spacing) if spacing is not None else [1.0] * pred.ndim
    with warnings.catch_warnings():  # empty-class and deprecation warnings; handled below
        warnings.simplefilter("ignore")
        hd = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")(
            p, g, spacing=spacing)[0].numpy()
    diagonal = float(np.sqrt(sum((n * s) ** 2 for n, s in zip(pred.shape, spacing, strict=True))))
    hd = np.where(in_p != in_g, diagonal, np.where(in_p | in_g, hd, np.nan))
    return {"dice": dice.astype(float), "iou": iou.astype(float), "hd95": hd.astype(float)}


def evaluate(model: nn.Module, images: Sequence[np.ndarray], labels: Sequence[np.ndarray],
             num_classes: int, roi: Sequence[int], overlap: float,
             spacings: Sequence[Sequence[float]] | None = None, precision: torch.dtype | None = None,
             keep: int = 0, hd95: bool = True) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """Predict every case; per-class metrics averaged over cases (NaN-aware).

    Returns:
        ({"dice", "iou", "hd95"} -> ``[K-1]`` means over cases, predictions of the first ``keep`` cases).
    """
    per_case, kept = [], []
    for i, (image, target) in enumerate(zip(images, labels, strict=True)):
        pred = predict_case(model, image, roi, overlap, precision)
        per_case.append(case_metrics(pred, target, num_classes, spacings[i] if spacings else None, hd95))
        if i < keep:
            kept.append(pred)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN class -> NaN mean
        means = {k: np.nanmean(np.stack([c[k] for c in per_case]), axis=0) for k in per_case[0]}
    return means, kept


def train_segmentation(net: nn.Module, train: tuple[torch.Tensor, torch.Tensor],
                       val: tuple[Sequence[np.ndarray], Sequence[np.ndarray]], spec, run_dir: Path,
                       seed: int, num_classes: int, roi: Sequence[int], overlap: float,
                       precision: torch.dtype | None = None, min_steps: int = 0,
                       val_checks: int = 5, device: torch.device | str = "cpu",
                       decoder_warmup: float = 0.0, compile: bool = False) -> dict[str, float]:
    """Fit ``net`` on ``train`` (uint8 images ``[N, 1, *S]``, uint8 labels ``[N, *S]``); evaluate
    mean foreground Dice on ``val`` (native-shape cases) ``val_checks`` times and keep the best
    weights (loaded into ``net`` on return; ``net.core``, the U-Net or detector, is saved as
    ``run_dir/model.safetensors``). ``net``: a ``SegmentationNet`` or an ``InstanceSegNet``.

    ``spec.patience`` p > 0 (if ``spec`` has it): stop at a validation check that finds the best
    check more than p x the planned steps behind (early stopping; the schedule stays planned for
    the whole run). ``decoder_warmup`` w: a ``SegmentationNet``'s encoder stays fixed (learning rate
    0) for the first w x planned steps. ``compile``: ``engine.compile`` (see ``fit``).

    Returns:
        ``best_epoch``, ``val_dice``, ``seconds`` (training), ``steps``, ``steps_per_epoch``,
        ``encoder_start``, ``val_curve`` (``[epoch, mean validation Dice]`` of every check: converged
        or step-limited? A check's step is (epoch + 1) x ``steps_per_epoch``).
    """
    images, labels = train
    if len(images) < spec.batch_size:  # tiny label fractions: repeat cases up to one batch (patches differ)
        reps = math.ceil(spec.batch_size / len(images))
        images, labels = torch.cat([images] * reps), torch.cat([labels] * reps)
    per_epoch = steps_per_epoch(len(images), spec.batch_size, False)
    epochs = planned_epochs(spec.epochs, min_steps, per_epoch)
    checks = {round((i + 1) * epochs / max(1, val_checks)) - 1 for i in range(max(1, val_checks))}
    best = BestEpoch(net.core, per_epoch, epochs * per_epoch, getattr(spec, "patience", 0.0))
    curve: list[list[float]] = []
    if hasattr(net, "encoder_start"):
        net.encoder_start = round(decoder_warmup * epochs * per_epoch)

    def select(epoch: int) -> dict[str, float]:
        if epoch not in checks and epoch != epochs - 1:
            return {}
        means = evaluate(net, *val, num_classes, roi, overlap, None, precision, hd95=False)[0]
        dice = float(np.nan_to_num(np.nanmean(means["dice"]), nan=0.0))
        curve.append([epoch, dice])
        return {"val_dice": dice, "stop": best.update(epoch, dice)}

    data = TensorBatches(images, labels, spec.batch_size, seed, drop_last=False, device=device)
    result = fit(net, data, spec, run_dir, device=device, precision=precision, min_steps=min_steps,
                 desc=run_dir.name, checkpoint=False, on_epoch_end=select, compile=compile)
    net.core.load_state_dict(best.state)
    save_weights(net.core, run_dir / "model.safetensors", {"best_epoch": str(best.epoch)})
    return {"best_epoch": best.epoch, "val_dice": best.score, "seconds": result.seconds,
            "steps": result.steps, "steps_per_epoch": per_epoch,
            "encoder_start": getattr(net, "encoder_start", 0), "val_curve": curve}


def load_pretrained(unet: UNet, encoder: dict[str, torch.Tensor],
                    checkpoint: dict[str, torch.Tensor] | None = None) -> dict[str, list[str]]:
    """Load an SSL encoder into ``unet.backbone`` (all keys must match) and, when ``checkpoint``
    (a full pretraining checkpoint, e.g. a restorative method's U-Net) is given, every decoder/head
    tensor found in it under any key prefix with a matching shape.

    Returns:
        ``{"encoder_loaded", "decoder_loaded", "decoder_missing"}`` lists of keys (for the log).
    """
    own_encoder = unet.backbone.state_dict()
    bad = sorted(set(own_encoder) ^ set(encoder)) or [
        k for k in own_encoder if own_encoder[k].shape != encoder[k].shape]
    if bad and all(any(k.endswith("." + own) for k in encoder) for own in own_encoder):
        # every backbone key under a prefix: the whole pretext checkpoint, given where the encoder goes
        raise MedsslError("pretrained encoder: the weights hold a whole pretraining checkpoint (the "
                          "encoder's tensors under a prefix); give pretrain.checkpoint the pretraining's "
                          "encoder.safetensors (checkpoint.safetensors is for segmentation.network=maskrcnn)")
    if bad:
        raise MedsslError(f"pretrained encoder does not fit backbone: {len(bad)} missing, unexpected or "
                          f"differently shaped tensors (e.g. '{bad[0]}'); same backbone and width?")
    unet.backbone.load_state_dict(encoder)
    report = {"encoder_loaded": sorted(encoder), "decoder_loaded": [], "decoder_missing": []}
    if checkpoint is None:
        return report
    own = {k: v for k, v in unet.state_dict().items() if not k.startswith("backbone.")}
    found = {}
    for key, value in own.items():
        hits = [c for c in checkpoint if (c == key or c.endswith("." + key))
                and checkpoint[c].shape == value.shape]
        if len(hits) == 1:
            found[key] = checkpoint[hits[0]]
        else:
            report["decoder_missing"].append(key)
    unet.load_state_dict(found, strict=False)
    report["decoder_loaded"] = sorted(found)
    return report
