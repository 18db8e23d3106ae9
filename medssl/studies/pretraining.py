"""Pretraining once per study, and the one place a backbone is built from ``cfg.model``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from medssl.config import ModelConfig, StudyConfig
from medssl.data.loaders import TensorBatches
from medssl.data.types import PretrainData
from medssl.engine import fit, resolve_channels_last, resolve_device, resolve_precision, seed_everything
from medssl.engine.checkpoint import load_weights, save_weights, weights_metadata
from medssl.engine.compute import count_params, flops_per_sample, peak_memory_mb
from medssl.engine.dist import barrier, is_main
from medssl.errors import MedsslError
from medssl.eval.selection import ValKnnSelection
from medssl.methods import create_method
from medssl.registry import create_backbone

console = Console(stderr=True)


def method_label(cfg: StudyConfig) -> str:
    """The method's name in results: a combination is named by its tasks (``genesis+simclr``)."""
    if cfg.pretrain.method == "combo" and cfg.pretrain.method_args.get("weights"):
        return "+".join(cfg.pretrain.method_args["weights"])
    return cfg.pretrain.method


def build_backbone(model: ModelConfig, spatial_dims: int, in_channels: int, size: int) -> torch.nn.Module:
    """The registered backbone ``model.backbone`` at ``model.width`` for this data's geometry."""
    return create_backbone(model.backbone, spatial_dims, in_channels, width=model.width, img_size=size)


def runtime(cfg: StudyConfig) -> tuple[torch.device, torch.dtype | None]:
    """(device, autocast dtype or None for fp32) from ``cfg.engine``."""
    device = resolve_device(cfg.engine.device)
    return device, resolve_precision(cfg.engine.precision, device)


def pretrain_seed(cfg: StudyConfig) -> int:
    """``pretrain.seed``, or the study's ``seed`` when it is null."""
    return cfg.seed if cfg.pretrain.seed is None else cfg.pretrain.seed


def pretrain(cfg: StudyConfig, data: PretrainData, run_dir: Path, resume: bool = False) -> dict[str, Any]:
    """Pretrain the encoder on ``data.images``; save ``run_dir/encoder.safetensors``.

    ``resume`` continues from ``run_dir/checkpoint.safetensors`` exactly (see ``medssl.engine.fit``).
    ``pretrain.snapshot_every`` N also saves ``run_dir/snapshots/encoder_epochNNNN.safetensors``
    after every N-th epoch. ``pretrain.select_on: val_knn`` keeps the epoch with the best validation
    kNN AUC (:class:`~medssl.eval.selection.ValKnnSelection`, on ``data.val``) as the encoder, and
    the last as ``encoder_last.safetensors``.
    Returns the row fields: steps, seconds, img_per_s, last_loss, pool (images pretrained on),
    pretrain_seed (:func:`pretrain_seed`), and
    with selection ``selected_epoch``, ``val_knn_auc`` (its score) and ``val_knn_auc_start``.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    seed = pretrain_seed(cfg)
    seed_everything(seed)
    backbone = build_backbone(cfg.model, data.spatial_dims, data.in_channels, data.size)
    model = create_method(cfg.pretrain.method, backbone, data.spatial_dims, data.size,
                          cfg.pretrain.method_args)
    device, precision = runtime(cfg)
    channels_last = resolve_channels_last(cfg.engine.channels_last, precision) and data.spatial_dims == 2
    batches = TensorBatches(data.images, None, cfg.pretrain.batch_size, seed, drop_last=True,
                            device=device, channels_last=channels_last)
    config = {"backbone": cfg.model.backbone, "width": cfg.model.width, "spatial_dims": data.spatial_dims,
              "in_channels": data.in_channels, "size": data.size, "method": cfg.pretrain.method}
    # the file rebuilds its encoder alone (``medssl.load_encoder``): no config.yaml needed beside it
    meta = {"method": cfg.pretrain.method, "backbone": cfg.model.backbone, "config": json.dumps(config)}
    every = cfg.pretrain.snapshot_every
    check_selection(cfg)
    select = _selection(cfg, data, backbone, len(batches), precision) if cfg.pretrain.select_on == "val_knn" \
        else None
    # rank 0 scores, keeps and saves; every rank stops with it (the others wait at the next
    # collective while it scores: fine for validation sets of a few thousand images)
    if select is not None and is_main():
        backbone.to(device)
        if not (resume and _restore(select, run_dir)):
            select.start()
            _keep(select, backbone, run_dir, meta)

    def on_epoch_end(epoch: int) -> dict[str, Any]:
        if every and (epoch + 1) % every == 0 and is_main():
            save_weights(backbone, run_dir / "snapshots" / f"encoder_epoch{epoch + 1:04d}.safetensors", meta)
        if select is None or not is_main():
            return {}
        return _kept(select(epoch), select, backbone, run_dir, meta)

    result = fit(model, batches, cfg.pretrain, run_dir, device=device, precision=precision,
                 channels_last=channels_last, log_every=cfg.engine.log_every,
                 desc=f"pretrain {cfg.pretrain.method}", resume=resume,
                 checkpoint_every=cfg.engine.checkpoint_every,
                 checkpoint_steps=cfg.engine.checkpoint_steps, max_seconds=cfg.pretrain.max_seconds,
                 accumulate=cfg.engine.accumulate, sync_bn=cfg.engine.sync_batchnorm,
                 tracking=cfg.engine.tracking, on_epoch_end=on_epoch_end if every or select else None,
                 compile=cfg.engine.compile)
    chosen: dict[str, Any] = {}
    if is_main():  # under torchrun every rank holds the same weights; rank 0 writes them
        if select is not None:
            _kept(select.finish(math.ceil(result.steps / len(batches))), select, backbone, run_dir, meta)
            save_weights(backbone, run_dir / "encoder_last.safetensors", meta)
            backbone.load_state_dict(select.best.state)
            chosen = {"select_on": "val_knn", "selected_epoch": select.best.epoch,
                      "val_knn_auc": select.best.score, "val_knn_auc_start": select.first}
            console.log(f"kept the encoder of epoch {select.best.epoch} (validation kNN AUC "
                        f"{select.best.score:.3f}; before training {select.first:.3f})")
        save_weights(backbone, run_dir / "encoder.safetensors", meta)
        console.log(f"pretrained {cfg.pretrain.method}: {result.steps} steps in {result.seconds:.0f} s "
                    f"({result.images_per_second:.0f} img/s), last loss {result.last_loss:.4f}")
    barrier()
    sample = data.images[:1].to(device).float() / 255
    return {"steps": result.steps, "seconds": result.seconds, "img_per_s": result.images_per_second,
            "last_loss": result.last_loss, "pool": len(data), "pretrain_seed": seed,
            "params": count_params(backbone), "pretext_params": count_params(model),
            "flops_per_sample": flops_per_sample(backbone, sample),
            "peak_mem_mb": round(peak_memory_mb(device), 1), **chosen}


NO_VALIDATION = ("pretrain.select_on: val_knn needs labelled validation images (a classification study or a "
                 "MedMNIST pool); this pool has none: use select_on: last")
SELECTED_FILE = "encoder_selected.safetensors"  # select_on val_knn: the best epoch so far (for resume)


def check_selection(cfg: StudyConfig) -> None:
    """The ``pretrain.select_*`` keys that would be silently ignored are errors."""
    spec = cfg.pretrain
    if spec.select_on == "last" and (spec.patience or spec.select_every != 1):
        raise MedsslError("pretrain.patience and pretrain.select_every act with pretrain.select_on: val_knn "
                          "only; set it, or remove them")
    if spec.select_on == "val_knn" and spec.checkpoint:
        raise MedsslError("pretrain.select_on: val_knn chooses a pretraining epoch, but pretrain.checkpoint "
                          "skips pretraining; remove one of them")


def _selection(cfg: StudyConfig, data: PretrainData, backbone: torch.nn.Module, per_epoch: int,
               precision: torch.dtype | None) -> ValKnnSelection:
    """The validation kNN selection of ``pretrain.select_*`` on ``data.val`` (k: ``finetune.knn_k``)."""
    if data.val is None or len(data.val) < 2:
        raise MedsslError(NO_VALIDATION)
    if data.val.labels.dim() == 1 and len(data.val.labels.unique()) < 2:
        raise MedsslError("pretrain.select_on: val_knn needs two classes among the validation images for an "
                          f"AUC; they all have class {int(data.val.labels[0])}")
    spec = cfg.pretrain
    return ValKnnSelection(backbone, data.val, data.num_classes, spec.select_every, per_epoch=per_epoch,
                           planned_steps=spec.epochs * per_epoch, patience=spec.patience, precision=precision,
                           k=cfg.finetune.knn_k)


def _kept(out: dict[str, Any], select: ValKnnSelection, backbone: torch.nn.Module, run_dir: Path,
          meta: dict[str, str]) -> dict[str, Any]:
    """Save the encoder when the score ``out`` just made it the best; return ``out``."""
    if out and select.best.epoch == out["epochs_done"]:
        _keep(select, backbone, run_dir, meta)
    return out


def _keep(select: ValKnnSelection, backbone: torch.nn.Module, run_dir: Path, meta: dict[str, str]) -> None:
    """Save the best encoder so far with its epoch and score (what a resumed run starts from)."""
    save_weights(backbone, run_dir / SELECTED_FILE,
                 {**meta, "epoch": str(select.best.epoch), "val_knn_auc": repr(select.best.score),
                  "val_knn_auc_start": repr(select.first)})


def _restore(select: ValKnnSelection, run_dir: Path) -> bool:
    """A resumed run's selection so far (False: a fresh run, nothing to restore)."""
    path = run_dir / SELECTED_FILE
    if not path.is_file():
        if (run_dir / "checkpoint.safetensors").is_file():
            raise MedsslError(f"{run_dir}: its checkpoint was written without pretrain.select_on: val_knn; "
                              "resume it with the config it was written with")
        return False
    info = weights_metadata(path)
    select.restore(int(info["epoch"]), float(info["val_knn_auc"]), float(info["val_knn_auc_start"]),
                   load_weights(path))
    return True
