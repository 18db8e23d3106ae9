"""Segmentation task (``task: segmentation``): per test fold x seed x label fraction x init, fine-tune
a U-Net whose encoder is the registered backbone (or, ``segmentation.network: maskrcnn``, the whole
pretrained Self-supervised Mask R-CNN) and score it per case.

Run directory, besides what the grid writes::

    splits/fold<k>.json                           patient-level train/val/test case indices + names
    segment/fold<k>/<init>_f<fraction>_s<seed>/   subset_indices.json log.jsonl model.safetensors
                                                  overlays/<case>.png rows.json
    results.jsonl                                 one "segmentation" row per cell (Dice/IoU/HD95 per class)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from medssl.config import StudyConfig
from medssl.data.segmentation import SegmentationData, load_segmentation, resolve_root
from medssl.data.splits import assert_disjoint_groups, group_fraction, holdout_split, save_split
from medssl.data.subsets import save_indices
from medssl.data.types import PretrainData
from medssl.engine import seed_everything
from medssl.errors import MedsslError
from medssl.eval.instance_finetune import InstanceSegNet, load_pretrained_detector
from medssl.eval.segmentation import SegmentationNet, evaluate, load_pretrained, train_segmentation
from medssl.methods import method_config
from medssl.models.maskrcnn import build_mask_rcnn
from medssl.models.unet import UNet
from medssl.report.overlays import save_overlay
from medssl.studies.grid import Cell, Pretrained
from medssl.studies.pretraining import NO_VALIDATION, build_backbone, runtime

console = Console(stderr=True)


class SegmentationTask:
    """NIfTI volumes or 2D image folders with masks; patient-level folds."""

    def load(self, cfg: StudyConfig) -> SegmentationData:
        return load_checked(cfg)

    def info(self, cfg: StudyConfig, data: SegmentationData) -> dict[str, Any]:
        return {"task": "segmentation", "dataset": data.name, "method": cfg.pretrain.method,
                "backbone": cfg.model.backbone, "width": cfg.model.width, "spatial_dims": data.spatial_dims}

    def folds(self, cfg: StudyConfig, data: SegmentationData, work: Path) -> dict[int, dict]:
        seg, splits = cfg.segmentation, {}
        for fold in seg.test_folds:
            splits[fold] = holdout_split(data.groups, seg.folds, fold, seg.val_fraction, cfg.seed)
            assert_disjoint_groups(splits[fold], data.groups)
            save_split(work / "splits" / f"fold{fold}.json", splits[fold], fold=fold, folds=seg.folds,
                       seed=cfg.seed, cases={k: [data.cases[i] for i in v] for k, v in splits[fold].items()})
        return splits

    def pretrain_pool(self, cfg: StudyConfig, data: SegmentationData,
                      folds: dict[int, dict] | None) -> PretrainData:
        # pretrain_pool=train (a single test fold) keeps the test cases' images out of pretraining
        if folds is None or cfg.segmentation.pretrain_pool == "all":
            return data.pretrain_data()
        return data.pretrain_data(folds[cfg.segmentation.test_folds[0]]["test"])

    def needs_checkpoint(self, cfg: StudyConfig) -> bool:
        return cfg.segmentation.load_decoder or cfg.segmentation.network == "maskrcnn"

    def cell_dir(self, cell: Cell) -> Path:
        return Path("segment") / f"fold{cell.fold}" / f"{cell.init}_f{cell.fraction:g}_s{cell.seed}"

    def run_cell(self, cfg: StudyConfig, data: SegmentationData, split: dict, cell: Cell,
                 pretrained: Pretrained | None, run_dir: Path) -> list[dict[str, Any]]:
        return [_one_run(cfg, data, split, cell, pretrained, run_dir)]

    def describe(self, cell: Cell, rows: list[dict[str, Any]]) -> str:
        return (f"fold {cell.fold} {cell.init} fraction={cell.fraction:g} seed={cell.seed}: "
                f"Dice {rows[0]['dice_mean']:.3f}")


def _check_config(cfg: StudyConfig) -> None:
    """The segmentation config checks that need no data (the common ones are in ``check_study``)."""
    seg, ft = cfg.segmentation, cfg.finetune
    if len(seg.label_values) < 2 or len(set(seg.label_values)) != len(seg.label_values):
        raise MedsslError(f"segmentation.label_values {seg.label_values}: need >= 2 distinct values")
    if len(seg.class_names) != len(seg.label_values) - 1:
        raise MedsslError(f"segmentation.class_names: {len(seg.class_names)} names for "
                          f"{len(seg.label_values) - 1} foreground classes")
    if not seg.test_folds or any(not 0 <= f < seg.folds for f in seg.test_folds):
        raise MedsslError(f"segmentation.test_folds {seg.test_folds}: each must be in 0..{seg.folds - 1}")
    if seg.pretrain_pool not in ("all", "train"):
        raise MedsslError(f"segmentation.pretrain_pool must be all or train, got '{seg.pretrain_pool}'")
    if seg.pretrain_pool == "train" and len(seg.test_folds) > 1:
        raise MedsslError("segmentation.pretrain_pool=train needs a single test fold (one pretraining)")
    if not 0 < seg.encoder_lr_scale <= 1:
        raise MedsslError(f"segmentation.encoder_lr_scale must be in (0, 1], got {seg.encoder_lr_scale}")
    if seg.network not in ("unet", "maskrcnn"):
        raise MedsslError(f"segmentation.network must be unet or maskrcnn, got '{seg.network}'")
    if seg.network == "maskrcnn" and "ssl" in ft.inits and cfg.pretrain.method != "distortion_maskrcnn":
        raise MedsslError("segmentation.network=maskrcnn fine-tunes a distortion_maskrcnn detector; "
                          f"pretrain.method is '{cfg.pretrain.method}'")
    if cfg.pretrain.select_on == "val_knn" and "ssl" in ft.inits and not cfg.pretrain.checkpoint:
        raise MedsslError(NO_VALIDATION)
    if seg.group_size < 1 or seg.val_checks < 1 or not 0 <= seg.sw_overlap < 1:
        raise MedsslError("segmentation: group_size and val_checks must be >= 1, sw_overlap in [0, 1)")


def load_checked(cfg: StudyConfig) -> SegmentationData:
    """Check the segmentation config and data before any file is written; return the dataset."""
    _check_config(cfg)
    seg = cfg.segmentation
    data = load_segmentation(cfg.data.dataset, resolve_root(cfg.data.dataset, cfg.data.path), seg,
                             cfg.data.size)
    for key in ("crop", "sw_roi"):
        value = getattr(seg, key)
        if value is not None and (len(value) != data.spatial_dims or min(value) < 1):
            raise MedsslError(f"segmentation.{key} {value}: need {data.spatial_dims} positive sizes")
    if cfg.segmentation.network == "maskrcnn" and data.spatial_dims != 2:
        raise MedsslError("segmentation.network=maskrcnn is 2D: set segmentation.slice_axis for volumes")
    new_unet(cfg, data)  # unknown backbone names fail here
    return data


def new_unet(cfg: StudyConfig, data: SegmentationData) -> UNet:
    backbone = build_backbone(cfg.model, data.spatial_dims, data.in_channels, data.size)
    if not hasattr(backbone, "stages"):
        raise MedsslError(f"backbone '{cfg.model.backbone}' has no feature stages for a U-Net decoder")
    return UNet(backbone, data.num_classes)


def nothing_loaded() -> dict[str, list[str]]:
    """The key report of a model that loaded no pretrained tensors (scratch init)."""
    return {"encoder_loaded": [], "decoder_loaded": [], "decoder_missing": []}


def new_instance_net(cfg: StudyConfig, data: SegmentationData, init: str,
                     checkpoint: dict[str, torch.Tensor] | None
                     ) -> tuple[InstanceSegNet, dict[str, list[str]]]:
    """The instance route: a Mask R-CNN (detector sized like the pretraining one), loaded with every
    pretrained detector tensor that fits for the ``ssl`` init; returns it and the key report."""
    backbone = build_backbone(cfg.model, 2, data.in_channels, max(data.shape))
    mc = method_config("distortion_maskrcnn", cfg.pretrain.method_args if init == "ssl" else {})
    c = data.in_channels
    detector = build_mask_rcnn(backbone, data.num_classes, max(data.shape), restoration=False,
                               fpn_channels=mc.fpn_channels, image_mean=[mc.image_mean] * c,
                               image_std=[mc.image_std] * c)
    loaded = nothing_loaded()
    if init == "ssl":
        report = load_pretrained_detector(detector, checkpoint)
        loaded["encoder_loaded"] = [k for k in report["loaded"] if k.startswith("backbone.body.")]
        loaded["decoder_loaded"] = [k for k in report["loaded"] if not k.startswith("backbone.body.")]
        loaded["decoder_missing"] = sorted(set(detector.state_dict()) - set(report["loaded"]))
        if not loaded["encoder_loaded"]:
            raise MedsslError("the pretraining checkpoint holds no detector backbone weights")
    return InstanceSegNet(detector, data.num_classes, cfg.finetune.augment), loaded


def _one_run(cfg: StudyConfig, data: SegmentationData, split: dict, cell: Cell,
             pretrained: Pretrained | None, run_dir: Path) -> dict[str, Any]:
    """Fine-tune one model on a label fraction of the fold's training cases; test it."""
    fold, seed, fraction, init = cell.fold, cell.seed, cell.fraction, cell.init
    seg, (device, precision) = cfg.segmentation, runtime(cfg)
    idx = group_fraction(split["train"], data.groups, fraction, seed)
    save_indices(run_dir / "subset_indices.json", idx, fraction=fraction, seed=seed, fold=fold,
                 groups=sorted(set(data.groups[i] for i in idx)),
                 cases=[data.cases[i] for i in idx])
    seed_everything(seed)
    if seg.network == "maskrcnn":
        net, loaded = new_instance_net(cfg, data, init, pretrained.checkpoint if pretrained else None)
        roi = list(data.shape)  # whole (padded) images
    else:
        unet = new_unet(cfg, data)
        loaded = nothing_loaded()
        if pretrained is not None:
            loaded = load_pretrained(unet, pretrained.encoder, pretrained.checkpoint)
        net = SegmentationNet(unet, seg.crop, cfg.finetune.augment,
                              freeze_encoder=seg.freeze_encoder and init == "ssl",
                              encoder_lr_scale=seg.encoder_lr_scale if init == "ssl" else 1.0)
        roi = seg.sw_roi or seg.crop
    if pretrained is not None:
        console.log(f"{run_dir.name}: loaded {len(loaded['encoder_loaded'])} encoder tensors"
                    + (f"; decoder/heads: {len(loaded['decoder_loaded'])} loaded, missing "
                       f"{loaded['decoder_missing'] or 'none'}" if pretrained.checkpoint is not None else ""))
    val = ([data.images[i] for i in split["val"]], [data.labels[i] for i in split["val"]])
    fit_stats = train_segmentation(net, data.stack(idx), val, cfg.finetune, run_dir, seed,
                                   data.num_classes, roi, seg.sw_overlap, precision,
                                   cfg.finetune.min_steps, seg.val_checks, device,
                                   decoder_warmup=seg.decoder_warmup if pretrained is not None else 0.0,
                                   compile=cfg.engine.compile)
    test = split["test"]
    t0 = time.perf_counter()
    means, preds = evaluate(net, [data.images[i] for i in test], [data.labels[i] for i in test],
                            data.num_classes, roi, seg.sw_overlap, [data.spacings[i] for i in test],
                            precision, keep=seg.overlays)
    overlays = [_overlay(data, run_dir, int(test[k]), p, f"{init}, {fraction:.0%} of labels, fold {fold}")
                for k, p in enumerate(preds)]
    row = {"protocol": "segmentation", "init": init, "fraction": fraction, "seed": seed, "fold": fold,
           "n_labelled": len(idx),
           "n_labelled_groups": len(set(data.groups[i] for i in idx)),
           "n_test": len(test), "classes": data.class_names, **_metric_fields(means, data.class_names),
           **fit_stats, "test_seconds": time.perf_counter() - t0, "overlays": overlays,
           "patience": cfg.finetune.patience,
           "encoder_lr_scale": seg.encoder_lr_scale if init == "ssl" else 1.0,
           "decoder_warmup": seg.decoder_warmup if fit_stats["encoder_start"] else 0.0,
           "encoder_tensors_loaded": len(loaded["encoder_loaded"]),
           "decoder_tensors_loaded": len(loaded["decoder_loaded"])}
    return row


def _one_cell(*args: Any) -> list[dict[str, Any]]:
    return [_one_run(*args)]


def _metric_fields(means: dict[str, np.ndarray], names: list[str]) -> dict[str, float]:
    out = {}
    for metric, values in means.items():
        for name, v in zip(names, values, strict=True):
            out[f"{metric}_{name}"] = float(v)
        out[f"{metric}_mean"] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    return out


def _overlay(data: SegmentationData, run_dir: Path, case: int, pred: np.ndarray, title: str) -> str:
    path = save_overlay(data.images[case], data.labels[case], pred,
                        run_dir / "overlays" / f"{data.cases[case]}.png", data.num_classes,
                        f"{data.cases[case]}: {title}")
    return str(path.relative_to(run_dir.parents[2]))  # relative to the study directory
