"""Full fine-tuning of an encoder + linear head on a labelled subset, selected on validation AUC."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medssl.data.loaders import TensorBatches
from medssl.engine import fit
from medssl.engine.checkpoint import save_weights
from medssl.engine.precision import autocast, model_device
from medssl.engine.trainer import OptimSpec, planned_epochs
from medssl.eval.metrics import classification_metrics, multilabel_metrics
from medssl.eval.selection import BestEpoch
from medssl.transforms.augment import ViewAugment


class FinetuneSpec(OptimSpec):
    batch_size: int
    patience: float  # stop when validation AUC has not improved for this share of the planned steps


def layer_lr_scales(backbone: nn.Module, encoder_lr_scale: float = 1.0,
                    layer_decay: float = 1.0) -> list[dict]:
    """Parameter groups of ``backbone`` with learning-rate scales for fine-tuning: group i of the
    backbone's ``layer_groups()`` (input first, L groups) gets ``encoder_lr_scale * layer_decay **
    (L - i)``, so the deepest group gets one decay step below the head and the stem the most
    (layer-wise lr decay as in BEiT/MAE fine-tuning). Backbones without ``layer_groups`` are one
    group; parameters outside the groups join the deepest one.
    """
    groups = backbone.layer_groups() if hasattr(backbone, "layer_groups") else [list(backbone.parameters())]
    listed = {id(p) for g in groups for p in g}
    groups[-1] = groups[-1] + [p for p in backbone.parameters() if id(p) not in listed]
    depth = len(groups)
    return [{"params": g, "lr_scale": encoder_lr_scale * layer_decay ** (depth - i)}
            for i, g in enumerate(groups) if g]


class Classifier(nn.Module):
    """Backbone + linear head. ``forward``: [B, C, *S] -> logits [B, K] (K labels if multi-label).

    Single-label: cross-entropy, softmax probabilities. Multi-label (labels [B, K] 0/1, as in
    ChestMNIST): binary cross-entropy per label, sigmoid probabilities.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, augment: ViewAugment | None = None,
                 multi_label: bool = False, encoder_lr_scale: float = 1.0, layer_decay: float = 1.0):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.num_features, num_classes)
        self.augment = augment
        self.multi_label = multi_label
        self.encoder_lr_scale, self.layer_decay = encoder_lr_scale, layer_decay

    def param_groups(self) -> list[dict]:
        """The head at the base learning rate; the backbone scaled (``layer_lr_scales``)."""
        return [{"params": list(self.head.parameters()), "lr_scale": 1.0},
                *layer_lr_scales(self.backbone, self.encoder_lr_scale, self.layer_decay)]

    @torch.no_grad()
    def set_head(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Start from a fitted linear probe (LP-FT: Kumar et al., "Fine-Tuning can Distort Pretrained
        Features and Underperform Out-of-Distribution", ICLR 2022): weight [K, F], bias [K]."""
        self.head.weight.copy_(weight)
        self.head.bias.copy_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().sigmoid() if self.multi_label else logits.float().softmax(1)

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = self.augment(batch["image"]) if self.augment is not None else batch["image"]
        logits = self(x).float()
        if self.multi_label:
            return {"loss": F.binary_cross_entropy_with_logits(logits, batch["label"].float())}
        return {"loss": F.cross_entropy(logits, batch["label"])}


@torch.no_grad()
def predict_proba(model: nn.Module, images: torch.Tensor, batch_size: int = 256,
                  precision: torch.dtype | None = None) -> np.ndarray:
    """uint8 [N, C, *S] -> probabilities [N, K] (softmax; sigmoid for a multi-label ``Classifier``),
    computed on the model's device."""
    model.eval()
    device, out = model_device(model), []
    to_probs = getattr(model, "probabilities", lambda z: z.float().softmax(1))
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device).float().div_(255)
        with autocast(device, precision):
            out.append(to_probs(model(x)).cpu())
    return torch.cat(out).numpy()


def finetune(model: Classifier, train: tuple[torch.Tensor, torch.Tensor],
             val: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
             spec: FinetuneSpec, run_dir: Path, seed: int, positive_class: int = 1,
             precision: torch.dtype | None = None, channels_last: bool = False,
             min_steps: int = 0, device: torch.device | str = "cpu", tracking: Sequence[str] = (),
             select_start: bool = False, compile: bool = False
             ) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Train on ``train`` (uint8 images, labels) on ``device``; keep the epoch with the best
    validation AUC (the earliest of equal ones); predict validation and test with it. With
    ``spec.patience`` p > 0, training stops once the best epoch lies more than p x the planned steps
    behind (early stopping; the schedule stays planned for the whole run). ``select_start``: the
    model before training is a candidate too (``best_epoch`` -1), for a head set from the linear
    probe (LP-FT): fine-tuning then never ends below the probe on validation data.

    Returns (test metrics plus ``best_epoch``, ``val_auc``, ``seconds``, ``steps``, ``img_per_s``;
    validation probabilities; test probabilities). ``tracking``, ``compile``: ``engine.tracking``,
    ``engine.compile`` (see ``fit``).
    """
    multi = getattr(model, "multi_label", False)
    data = TensorBatches(train[0], train[1], spec.batch_size, seed, drop_last=False, device=device,
                         channels_last=channels_last)
    per_epoch = len(data)
    patience = getattr(spec, "patience", 0.0)
    planned = planned_epochs(spec.epochs, min_steps, per_epoch) * per_epoch if patience else 0
    best = BestEpoch(model, per_epoch, planned, patience)

    def select(epoch: int) -> dict[str, float]:
        probs = predict_proba(model, val[0], precision=precision)
        auc = multilabel_metrics(val[1].numpy(), probs)["auc"] if multi else \
            classification_metrics(val[1].numpy(), probs, positive_class)["auc"]
        return {"val_auc": auc, "stop": best.update(epoch, auc)}

    if select_start:
        select(-1)
    result = fit(model, data, spec, run_dir, device=device, precision=precision,
                 channels_last=channels_last, min_steps=min_steps, desc=run_dir.name, checkpoint=False,
                 on_epoch_end=select, tracking=tracking, compile=compile)
    model.load_state_dict(best.state)
    save_weights(model, run_dir / "model.safetensors", {"best_epoch": str(best.epoch)})
    p_val = predict_proba(model, val[0], precision=precision)
    p_test = predict_proba(model, test[0], precision=precision)
    metrics = multilabel_metrics(test[1].numpy(), p_test) if multi else \
        classification_metrics(test[1].numpy(), p_test, positive_class)
    return ({**metrics, "best_epoch": best.epoch, "val_auc": best.score, "seconds": result.seconds,
             "steps": result.steps, "img_per_s": result.images_per_second}, p_val, p_test)
