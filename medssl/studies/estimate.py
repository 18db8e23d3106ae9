"""``medssl study --dry-run``: the cells a config will run and what they will cost here.

Costs come from measured throughput, not guesses: a few optimisation steps of the configured
pretext model and of the fine-tuning classifier, on this machine's device and precision, at the
configured batch sizes (2 warm-up steps, then the median of 4 timed ones), multiplied by each
cell's step count. Evaluation (feature extraction, probes, validation passes) is not included.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from medssl.config import StudyConfig
from medssl.data.loaders import TensorBatches, steps_per_epoch
from medssl.engine import resolve_channels_last, seed_everything
from medssl.engine.precision import autocast, precision_name
from medssl.engine.trainer import make_optimizer
from medssl.eval.finetune import Classifier
from medssl.methods import create_method
from medssl.studies.pretraining import build_backbone, pretrain_seed, runtime


@dataclass
class Planned:
    study: str
    what: str  # "pretrain <method>" or "<init> f=<fraction> s=<seed>"
    steps: int
    seconds: float


def seconds_per_step(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor | None,
                     batch_size: int, cfg: StudyConfig, spec: Any) -> float:
    """Median wall time of one optimisation step of ``model`` (2 warm-up steps, 4 timed)."""
    device, precision = runtime(cfg)
    channels_last = resolve_channels_last(cfg.engine.channels_last, precision) and images.dim() == 4
    model.to(device).train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, spec)
    batches = TensorBatches(images, labels, min(batch_size, len(images)), 0, drop_last=True, device=device,
                            channels_last=channels_last, rank=0, world=1)
    times = []
    for i, batch in enumerate(_cycle(batches, 6)):
        t0 = time.perf_counter()
        with autocast(device, precision):
            loss = model.training_step(batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _cycle(batches: TensorBatches, n: int):
    epoch = 0
    while True:
        for batch in batches.epoch(epoch):
            yield batch
            n -= 1
            if n == 0:
                return
        epoch += 1


def plan(cfg: StudyConfig) -> list[Planned]:
    """Every pretraining and fine-tuning cell of a classification study, with its estimated cost."""
    from medssl.data.subsets import label_fraction_indices
    from medssl.studies.tasks import check_study

    data = check_study(cfg)
    pool = data.pretrain_data()
    out: list[Planned] = []
    if "ssl" in cfg.finetune.inits and not cfg.pretrain.checkpoint:
        seed_everything(pretrain_seed(cfg))
        backbone = build_backbone(cfg.model, pool.spatial_dims, pool.in_channels, pool.size)
        model = create_method(cfg.pretrain.method, backbone, pool.spatial_dims, pool.size,
                              cfg.pretrain.method_args)
        per_step = seconds_per_step(model, pool.images, None, cfg.pretrain.batch_size, cfg, cfg.pretrain)
        steps = cfg.pretrain.epochs * steps_per_epoch(len(pool), cfg.pretrain.batch_size, True)
        seconds = steps * per_step
        if cfg.pretrain.max_seconds:
            seconds = min(seconds, cfg.pretrain.max_seconds)
            steps = min(steps, math.ceil(cfg.pretrain.max_seconds / per_step))
        out.append(Planned(cfg.name, f"pretrain {cfg.pretrain.method}", steps, seconds))
    backbone = build_backbone(cfg.model, data.spatial_dims, data.in_channels, data.size)
    model = Classifier(backbone, data.num_classes, multi_label=data.multi_label)
    per_step = seconds_per_step(model, data.train.images, data.train.labels, cfg.finetune.batch_size, cfg,
                                cfg.finetune)
    for seed in cfg.finetune.seeds:
        for fraction in cfg.finetune.fractions:
            n = len(label_fraction_indices(data.train.labels, fraction, seed))
            per_epoch = max(1, steps_per_epoch(n, cfg.finetune.batch_size, False))
            steps = max(cfg.finetune.epochs, math.ceil(cfg.finetune.min_steps / per_epoch)) * per_epoch
            for init in cfg.finetune.inits:
                out.append(Planned(cfg.name, f"{init} f={fraction:g} s={seed}", steps, steps * per_step))
    return out


def dry_run(cfg: StudyConfig) -> str:
    """A markdown table of every cell (a grid: of every study) with steps and estimated time."""
    from medssl.studies.sweep import grid_studies

    studies = grid_studies(cfg) if cfg.grid.datasets else [cfg]
    rows = [p for study in studies for p in plan(study)]
    device, precision = runtime(cfg)
    lines = [f"Dry run on {device.type} ({precision_name(precision)}): "
             f"{len(rows)} cells; costs from measured step times, evaluation not included.", "",
             "| study | cell | steps | est. minutes |", "|---|---|---|---|"]
    lines += [f"| {p.study} | {p.what} | {p.steps} | {p.seconds / 60:.1f} |" for p in rows]
    total = sum(p.seconds for p in rows)
    lines += ["", f"Total: {total / 60:.0f} minutes of training ({total / 3600:.2f} h)."]
    return "\n".join(lines)
