"""Classification task: kNN and linear probes on frozen features, and full fine-tuning, per cell.

Cell directory: ``finetune/<init>_f<fraction>_s<seed>/`` with ``subset_indices.json``,
``log.jsonl``, ``model.safetensors``. Rows: ``knn``, ``linear`` and ``finetune``.
"""

from __future__ import annotations

import functools
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from medssl.config import StudyConfig
from medssl.data.medmnist import load_medmnist, resolve
from medssl.data.subsets import label_fraction_indices, save_indices
from medssl.data.types import ClassificationData, PretrainData
from medssl.engine import resolve_channels_last, seed_everything
from medssl.engine.compute import count_params, flops_per_sample, peak_memory_mb, reset_peak_memory
from medssl.errors import MedsslError
from medssl.eval.finetune import Classifier, finetune, predict_proba
from medssl.eval.metrics import classification_metrics, multilabel_metrics, operating_points
from medssl.eval.probes import extract_features, fit_linear_probe, knn_predict
from medssl.io import atomic_write
from medssl.studies.grid import Cell, Pretrained
from medssl.studies.pretraining import build_backbone, method_label, runtime
from medssl.transforms.augment import light_augment

SUPPORTED_TASKS = ("binary-class", "multi-class", "ordinal-regression", "multi-label, binary-class")


class ClassificationTask:
    """MedMNIST (default) or a label CSV with patient-level folds; the dataset's own split."""

    def load(self, cfg: StudyConfig) -> ClassificationData:
        data = _load(cfg)
        if data.task not in SUPPORTED_TASKS:
            raise MedsslError(f"{data.name}: task '{data.task}' is not supported yet "
                              f"(supported: {', '.join(SUPPORTED_TASKS)})")
        if data.num_classes == 2 and cfg.data.positive_class not in (0, 1):
            raise MedsslError(f"data.positive_class must be 0 or 1, got {cfg.data.positive_class}")
        build_backbone(cfg.model, data.spatial_dims, data.in_channels, data.size)  # unknown names fail here
        extra_tests(cfg, data)  # second test sets and a cross-dataset pool are checked before any write
        if cfg.pretrain.dataset:
            self.pretrain_pool(cfg, data, {})
        return data

    def info(self, cfg: StudyConfig, data: ClassificationData) -> dict[str, Any]:
        return {"dataset": data.name, "method": method_label(cfg), "backbone": cfg.model.backbone,
                "width": cfg.model.width}

    def folds(self, cfg: StudyConfig, data: ClassificationData, work: Path) -> dict[int, None]:
        return {0: None}  # the dataset's own train/val/test split

    def pretrain_pool(self, cfg: StudyConfig, data: ClassificationData, folds: dict | None) -> PretrainData:
        if not cfg.pretrain.dataset:
            return data.pretrain_data()  # the training images, never val or test
        # another pool; the epoch is still chosen on this study's validation split
        return replace(cross_pool(cfg, data), val=data.val, num_classes=data.num_classes)

    def needs_checkpoint(self, cfg: StudyConfig) -> bool:
        return False

    def cell_dir(self, cell: Cell) -> Path:
        return Path("finetune") / f"{cell.init}_f{cell.fraction:g}_s{cell.seed}"

    def run_cell(self, cfg: StudyConfig, data: ClassificationData, split: None, cell: Cell,
                 pretrained: Pretrained | None, run_dir: Path) -> list[dict[str, Any]]:
        idx = label_fraction_indices(data.train.labels, cell.fraction, cell.seed)
        run_dir.mkdir(parents=True, exist_ok=True)
        save_indices(run_dir / "subset_indices.json", idx, fraction=cell.fraction, seed=cell.seed,
                     dataset=data.name, split="train")
        seed_everything(cell.seed)
        backbone = build_backbone(cfg.model, data.spatial_dims, data.in_channels, data.size)
        if pretrained is not None:
            backbone.load_state_dict(pretrained.encoder)
        device, precision = runtime(cfg)
        backbone.to(device)
        images, labels = data.train.images[idx], data.train.labels[idx]
        base = {"init": cell.init, "fraction": cell.fraction, "seed": cell.seed, "n_labelled": len(idx)}
        y_val, y_test = data.val.labels.numpy(), data.test.labels.numpy()
        predictions: dict[str, np.ndarray] = {"val_y": y_val, "test_y": y_test}
        rows, ft, probe = [], cfg.finetune, None
        pretrained_encoder = pretrained is not None
        lp_ft = ft.head_init == "probe" and pretrained_encoder  # on val: scratch is better with a random head
        if ft.knn or lp_ft:
            feats = {s: extract_features(backbone, x, precision=precision)
                     for s, x in (("train", images), ("val", data.val.images), ("test", data.test.images))}
            y = labels.numpy()
            probe = fit_linear_probe(feats["train"], y, feats["val"], y_val, data.num_classes,
                                     cfg.data.positive_class, data.multi_label)
        if ft.knn:
            k = ft.knn_k
            knn = [knn_predict(feats["train"], y, feats[s], data.num_classes, k, data.multi_label)
                   for s in ("val", "test")]
            linear = (probe.val_probs, probe.predict(feats["test"]))
            for protocol, (pv, pt), extra in (("knn", knn, {}), ("linear", linear, {"C": probe.C})):
                predictions.update({f"{protocol}_val": pv, f"{protocol}_test": pt})
                rows.append({"protocol": protocol, **base, **score(cfg, data, pv, pt), **extra})
        model = Classifier(backbone, data.num_classes, light_augment(data.spatial_dims, data.size)
                           if ft.augment else None, multi_label=data.multi_label,
                           encoder_lr_scale=ft.encoder_lr_scale if pretrained_encoder else 1.0,
                           layer_decay=ft.layer_decay if pretrained_encoder else 1.0)
        if lp_ft:
            model.set_head(*probe.head())
        base = {**base, **recipe(cfg, pretrained_encoder)}
        reset_peak_memory(device)
        metrics, p_val, p_test = finetune(
            model, (images, labels), (data.val.images, data.val.labels), (data.test.images, data.test.labels),
            cfg.finetune, run_dir, cell.seed, cfg.data.positive_class, precision,
            resolve_channels_last(cfg.engine.channels_last, precision) and data.spatial_dims == 2,
            cfg.finetune.min_steps, device, tracking=cfg.engine.tracking,
            select_start=lp_ft, compile=cfg.engine.compile)
        predictions.update({"finetune_val": p_val, "finetune_test": p_test})
        sample = data.test.images[:1].to(device).float() / 255
        compute = {"params": count_params(model), "flops_per_sample": flops_per_sample(model, sample),
                   "peak_mem_mb": round(peak_memory_mb(device), 1)}
        for name, other in extra_tests(cfg, data).items():  # the same model on a second test set
            p = predict_proba(model, other.test.images, precision=precision)
            predictions[f"finetune_test@{name}"], predictions[f"test_y@{name}"] = p, other.test.labels.numpy()
            metrics.update({f"{k}@{name}": v for k, v in classification_metrics(
                other.test.labels.numpy(), p, cfg.data.positive_class, task=data.task).items()})
        rows.append({"protocol": "finetune", **base, **metrics, **score(cfg, data, p_val, p_test), **compute})
        save_predictions(run_dir / "predictions.npz", predictions)
        return rows

    def describe(self, cell: Cell, rows: list[dict[str, Any]]) -> str:
        return f"{cell.init} fraction={cell.fraction:g} seed={cell.seed}: done"


def recipe(cfg: StudyConfig, pretrained: bool) -> dict[str, Any]:
    """The fine-tuning recipe a finetune row was trained with (recorded in every row)."""
    ft = cfg.finetune
    return {"head_init": ft.head_init if pretrained else "random",
            "encoder_lr_scale": ft.encoder_lr_scale if pretrained else 1.0,
            "layer_decay": ft.layer_decay if pretrained else 1.0, "patience": ft.patience}


def score(cfg: StudyConfig, data: ClassificationData, p_val: np.ndarray,
          p_test: np.ndarray) -> dict[str, Any]:
    """Test metrics of one protocol's predictions; for binary tasks also the operating points chosen
    on the validation predictions (Youden; 90% sensitivity) beside the fixed 0.5."""
    y_val, y_test = data.val.labels.numpy(), data.test.labels.numpy()
    if data.multi_label:
        return multilabel_metrics(y_test, p_test, data.class_names)
    metrics = classification_metrics(y_test, p_test, cfg.data.positive_class, task=data.task)
    if data.num_classes == 2:
        metrics.update(operating_points(y_val, p_val, y_test, p_test, cfg.data.positive_class))
    return metrics


def save_predictions(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """The cell's validation and test labels and probabilities (``<protocol>_val``/``_test``), for
    the report's intervals, paired tests, curves and calibration."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **{k: np.asarray(v, np.float32 if k.endswith(("_val", "_test")) else None)
                                       for k, v in arrays.items()})
    atomic_write(path, write)


def cross_pool(cfg: StudyConfig, data: ClassificationData) -> PretrainData:
    """``pretrain.dataset``: another MedMNIST flag's training images, or a folder, at this study's size."""
    from medssl.data.pool import folder_pool, resize_batch

    name = cfg.pretrain.dataset
    if Path(os.path.expandvars(name)).expanduser().is_dir():
        pool = folder_pool(Path(os.path.expandvars(name)).expanduser(), data.size, storage=cfg.data.storage,
                           workers=cfg.data.workers)
    else:
        pool = load_medmnist(name, storage=cfg.data.storage).pretrain_data()  # its 28 px file
        images = resize_batch(pool.images, data.size)
        pool = PretrainData(images, pool.spatial_dims, pool.in_channels, data.size)
    if (pool.spatial_dims, pool.in_channels) != (data.spatial_dims, data.in_channels):
        raise MedsslError(f"pretrain.dataset={name}: {pool.spatial_dims}D images with {pool.in_channels} "
                          f"channel(s), but {data.name} has {data.spatial_dims}D with {data.in_channels}")
    return pool


def _second_test_set(flag: str, size: int, path: str | None, storage: str) -> ClassificationData:
    """Read once per file version: every cell of a study scores its model on the same test set."""
    file = resolve(flag.lower(), size, path)
    return _read_test_set(flag, size, str(file), file.stat().st_mtime_ns, storage)


@functools.lru_cache(maxsize=8)
def _read_test_set(flag: str, size: int, file: str, mtime_ns: int, storage: str) -> ClassificationData:
    return load_medmnist(flag, size, file, download=False, storage=storage)


def extra_tests(cfg: StudyConfig, data: ClassificationData) -> dict[str, ClassificationData]:
    """``finetune.extra_test``: second test sets (``flag`` or ``flag=path``) with this data's classes."""
    out = {}
    for entry in cfg.finetune.extra_test:
        flag, _, path = entry.partition("=")
        other = _second_test_set(flag, data.size, path or None, cfg.data.storage)
        if (other.num_classes, other.spatial_dims, other.in_channels) != \
                (data.num_classes, data.spatial_dims, data.in_channels):
            raise MedsslError(f"finetune.extra_test={entry}: {other.num_classes} classes, "
                              f"{other.spatial_dims}D, {other.in_channels} channel(s); {data.name} has "
                              f"{data.num_classes}, {data.spatial_dims}D, {data.in_channels}")
        out[Path(path).stem if path else flag] = other
    return out


def _load(cfg: StudyConfig) -> ClassificationData:
    """MedMNIST (default) or, with ``data.format: csv``, a label CSV with patient-level folds."""
    if cfg.data.format == "medmnist":
        return load_medmnist(cfg.data.dataset, cfg.data.size, cfg.data.path, storage=cfg.data.storage)
    if cfg.data.format == "folder":
        raise MedsslError("data.format=folder holds unlabelled images: pretrain on it with medssl pretrain "
                          "(a study needs labels: medmnist or csv)")
    if cfg.data.format != "csv":
        raise MedsslError(f"data.format must be medmnist or csv, got '{cfg.data.format}'")
    from medssl.data.folder import load_csv_classification
    from medssl.data.segmentation import resolve_root

    path = cfg.data.path or resolve_root(cfg.data.dataset, None) / "labels.csv"
    return load_csv_classification(path, cfg.data.columns, cfg.data.size, cfg.data.window,
                                   cfg.data.folds, cfg.data.test_fold, cfg.seed, cfg.data.dataset,
                                   storage=cfg.data.storage, workers=cfg.data.workers)
