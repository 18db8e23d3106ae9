"""A study: pretrain once, then for each seed x label fraction x init, probe and fine-tune.

Run directory (written as ``<name>.incomplete`` and renamed to ``<name>`` only on success)::

    config.yaml                         the resolved config
    pretrain/  log.jsonl encoder.safetensors checkpoint.safetensors state.pt
    finetune/<init>_f<fraction>_s<seed>/  log.jsonl subset_indices.json model.safetensors
    results.jsonl                       one row per (protocol, init, fraction, seed)
    report.md label_efficiency.png      made from results.jsonl alone
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from medssl.config import StudyConfig
from medssl.data.medmnist import MedMNIST, load_medmnist
from medssl.data.subsets import label_fraction_indices, save_indices
from medssl.engine import fit, resolve_precision, seed_everything
from medssl.engine.checkpoint import load_weights, save_weights
from medssl.errors import MedsslError
from medssl.eval.finetune import Classifier, finetune
from medssl.eval.probes import extract_features, knn_probe, linear_probe
from medssl.methods import create_method, method_config
from medssl.registry import create_backbone
from medssl.rundir import append_row, finish_run, run_cell, start_run
from medssl.transforms.augment import light_augment

console = Console(stderr=True)

SUPPORTED_TASKS = ("binary-class", "multi-class", "ordinal-regression")


def validate(cfg: StudyConfig) -> MedMNIST:
    """Check everything that can be checked before any file is written; return the data."""
    if cfg.task not in ("classification", "segmentation"):
        raise MedsslError(f"task must be classification or segmentation, got '{cfg.task}'")
    if cfg.task == "segmentation":  # a SegmentationData: duck-types what pretrain() reads
        from medssl.seg_study import validate_segmentation

        return validate_segmentation(cfg)
    method_config(cfg.pretrain.method, cfg.pretrain.method_args)
    resolve_precision(cfg.engine.precision)
    for f in cfg.finetune.fractions:
        if not 0 < f <= 1:
            raise MedsslError(f"finetune.fractions: {f} is not in (0, 1]")
    unknown = set(cfg.finetune.inits) - {"ssl", "scratch"}
    if unknown:
        raise MedsslError(f"finetune.inits: unknown init {sorted(unknown)}; use ssl and/or scratch")
    data = _load_classification(cfg)
    if data.task not in SUPPORTED_TASKS:
        raise MedsslError(f"{data.flag}: task '{data.task}' is not supported yet "
                          f"(supported: {', '.join(SUPPORTED_TASKS)})")
    if data.num_classes == 2 and cfg.data.positive_class not in (0, 1):
        raise MedsslError(f"data.positive_class must be 0 or 1, got {cfg.data.positive_class}")
    new_backbone(cfg, data)  # unknown backbone names fail here
    if cfg.pretrain.checkpoint:
        load_weights(Path(cfg.pretrain.checkpoint))
    return data


def _load_classification(cfg: StudyConfig) -> MedMNIST:
    """MedMNIST (default) or, with ``data.format: csv``, a label CSV with patient-level folds."""
    if cfg.data.format == "medmnist":
        return load_medmnist(cfg.data.dataset, cfg.data.size, cfg.data.path)
    if cfg.data.format != "csv":
        raise MedsslError(f"data.format must be medmnist or csv, got '{cfg.data.format}'")
    from medssl.data.folder import load_csv_classification
    from medssl.data.segmentation import resolve_root

    path = cfg.data.path or resolve_root(cfg.data.dataset, None) / "labels.csv"
    return load_csv_classification(path, cfg.data.columns, cfg.data.size, cfg.data.window,
                                   cfg.data.folds, cfg.data.test_fold, cfg.seed, cfg.data.dataset)


def new_backbone(cfg: StudyConfig, data: MedMNIST) -> torch.nn.Module:
    return create_backbone(cfg.model.backbone, data.spatial_dims, data.in_channels,
                           width=cfg.model.width, img_size=data.size)


def pretrain(cfg: StudyConfig, data: MedMNIST, run_dir: Path, resume: bool = False) -> dict:
    """Pretrain the encoder on the unlabelled train images; save ``encoder.safetensors``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    backbone = new_backbone(cfg, data)
    model = create_method(cfg.pretrain.method, backbone, data.spatial_dims, data.size,
                          cfg.pretrain.method_args)
    result = fit(model, data.train.images, None, cfg.pretrain, run_dir, cfg.seed,
                 precision=resolve_precision(cfg.engine.precision),
                 channels_last=cfg.engine.channels_last, log_every=cfg.engine.log_every,
                 desc=f"pretrain {cfg.pretrain.method}", resume=resume,
                 checkpoint_every=cfg.engine.checkpoint_every,
                 checkpoint_steps=cfg.engine.checkpoint_steps, max_seconds=cfg.pretrain.max_seconds)
    save_weights(backbone, run_dir / "encoder.safetensors",
                 {"method": cfg.pretrain.method, "backbone": cfg.model.backbone})
    console.log(f"pretrained {cfg.pretrain.method}: {result.steps} steps in {result.seconds:.0f} s "
                f"({result.images_per_second:.0f} img/s), last loss {result.last_loss:.4f}")
    return {"steps": result.steps, "seconds": result.seconds,
            "img_per_s": result.images_per_second, "last_loss": result.last_loss}


def _rows_for_subset(cfg: StudyConfig, data: MedMNIST, encoder: dict | None, init: str,
                     fraction: float, seed: int, run_dir: Path) -> list[dict[str, Any]]:
    idx = label_fraction_indices(data.train.labels, fraction, seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_indices(run_dir / "subset_indices.json", idx, fraction=fraction, seed=seed,
                 dataset=data.flag, split="train")
    seed_everything(seed)
    backbone = new_backbone(cfg, data)
    if init == "ssl":
        backbone.load_state_dict(encoder)
    precision = resolve_precision(cfg.engine.precision)
    images, labels = data.train.images[idx], data.train.labels[idx]
    base = {"init": init, "fraction": fraction, "seed": seed, "n_labelled": len(idx)}
    pos, k = cfg.data.positive_class, data.num_classes
    rows = []
    if cfg.finetune.knn:
        feats = {s: extract_features(backbone, x, precision=precision)
                 for s, x in (("train", images), ("val", data.val.images), ("test", data.test.images))}
        rows.append({**base, "protocol": "knn", **knn_probe(
            feats["train"], labels.numpy(), feats["test"], data.test.labels.numpy(), k,
            cfg.finetune.knn_k, pos)})
        rows.append({**base, "protocol": "linear", **linear_probe(
            feats["train"], labels.numpy(), feats["val"], data.val.labels.numpy(),
            feats["test"], data.test.labels.numpy(), k, pos)})
    model = Classifier(backbone, k, light_augment(data.spatial_dims, data.size)
                       if cfg.finetune.augment else None)
    metrics = finetune(model, (images, labels), (data.val.images, data.val.labels),
                       (data.test.images, data.test.labels), cfg.finetune, run_dir, seed, pos,
                       precision, cfg.engine.channels_last, cfg.finetune.min_steps)
    rows.append({**base, "protocol": "finetune", **metrics})
    return rows


def run_study(cfg: StudyConfig, overwrite: bool = False, resume: bool = False) -> Path:
    """Run the whole study; returns the finished run directory. ``resume`` continues a killed one."""
    if cfg.task == "segmentation":
        from medssl.seg_study import run_segmentation_study

        return run_segmentation_study(cfg, overwrite, resume)
    data = validate(cfg)
    work, final = start_run(cfg, overwrite, resume)
    t0 = time.perf_counter()
    info = {"dataset": data.flag, "method": cfg.pretrain.method, "backbone": cfg.model.backbone,
            "width": cfg.model.width}
    results = work / "results.jsonl"
    encoder = None
    if "ssl" in cfg.finetune.inits:
        if cfg.pretrain.checkpoint:
            encoder = load_weights(Path(cfg.pretrain.checkpoint))
            append_row(results, {"protocol": "pretrain", **info, "checkpoint": cfg.pretrain.checkpoint})
        else:
            for row in run_cell(work / "pretrain", lambda: [
                    {"protocol": "pretrain", **info, **pretrain(cfg, data, work / "pretrain", resume)}],
                    clear=False):  # a killed pretraining continues from its checkpoint
                append_row(results, row)
            encoder = load_weights(work / "pretrain" / "encoder.safetensors")
    for seed in cfg.finetune.seeds:
        for fraction in cfg.finetune.fractions:
            for init in cfg.finetune.inits:
                sub = work / "finetune" / f"{init}_f{fraction:g}_s{seed}"
                cell = partial(_rows_for_subset, cfg, data, encoder, init, fraction, seed, sub)
                for row in run_cell(sub, cell):
                    append_row(results, {**info, **row})
                console.log(f"{init} fraction={fraction:g} seed={seed}: done")
    append_row(results, {"protocol": "study", **info, "seconds": time.perf_counter() - t0})
    return finish_run(work, final)
