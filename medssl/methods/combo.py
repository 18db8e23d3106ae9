"""Several pretext tasks trained together on one shared encoder, with weighted losses.

As in TransVW (Haghighi et al., IEEE TMI 2021: self-classification + restoration), DiRA
(Haghighi et al., CVPR 2022: discriminative + restorative, + adversarial which we leave out) and
SwinUNETR's pretraining (Tang et al., CVPR 2022: rotation + contrastive + in-painting). Each task
is the registered method built around the SAME backbone module, with its own heads; the loss is
``sum_t w_t * L_t`` and every unweighted term is logged as ``loss/<task>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from medssl.config import from_dict
from medssl.errors import MedsslError
from medssl.methods._common import save_shared_once
from medssl.methods.table import SINGLE_METHODS
from medssl.transforms.augment import ViewAugment


def _default_weights() -> dict[str, float]:
    return {"genesis": 1.0, "simclr": 0.5, "rotation": 0.2}


@dataclass
class ComboConfig:
    weights: dict[str, float] = field(default_factory=_default_weights)  # task -> loss weight (> 0)
    args: dict[str, dict[str, Any]] = field(default_factory=dict)  # task -> its method_args

    def __post_init__(self) -> None:
        task_configs(self)  # fail at config time, before any run directory is written


def task_configs(cfg: ComboConfig) -> dict[str, Any]:
    """Each task's config dataclass; unknown tasks, bad weights or bad args are MedsslErrors."""
    if not cfg.weights:
        raise MedsslError("combo: 'weights' lists no task; e.g. {genesis: 1.0, simclr: 0.5}")
    known = sorted(SINGLE_METHODS)
    for name, weight in cfg.weights.items():
        if name not in known:
            raise MedsslError(f"combo: unknown task '{name}'; known: {', '.join(known)}")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or weight <= 0:
            raise MedsslError(f"combo: weight of '{name}' must be a number > 0, got {weight!r}")
    extra = sorted(set(cfg.args) - set(cfg.weights))
    if extra:
        raise MedsslError(f"combo: 'args' for '{extra[0]}', which is not in 'weights'")
    return {name: from_dict(SINGLE_METHODS[name][1], cfg.args.get(name) or {}, f"combo task '{name}'",
                            f"pretrain.method_args.args.{name}.") for name in cfg.weights}


class Combo(nn.Module):
    """Weighted sum of pretext tasks sharing ``backbone``; batch {"image": [B, C, *S]}."""

    def __init__(self, backbone: nn.Module, augment: ViewAugment, cfg: ComboConfig) -> None:
        super().__init__()
        self.backbone, self.cfg = backbone, cfg
        tasks = {}
        for name, task_cfg in task_configs(cfg).items():
            try:
                tasks[name] = SINGLE_METHODS[name][0](backbone, augment, task_cfg)
            except MedsslError as err:
                raise MedsslError(f"combo: task '{name}' cannot share the {type(backbone).__name__} "
                                  f"encoder: {err}") from None
        self.tasks = nn.ModuleDict(tasks)
        save_shared_once(self)  # the backbone is saved once, as backbone.*

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        total = torch.zeros((), device=batch["image"].device)
        logs: dict[str, torch.Tensor] = {}
        for name, task in self.tasks.items():
            out = task.training_step(batch)
            total = total + self.cfg.weights[name] * out["loss"].float()
            logs[f"loss/{name}"] = out["loss"].detach()
            logs.update({f"{name}/{k}": v for k, v in out.items() if k != "loss"})
        return {"loss": total, **logs}

    def after_step(self, step: int, total: int) -> None:
        for task in self.tasks.values():
            if hasattr(task, "after_step"):
                task.after_step(step, total)
