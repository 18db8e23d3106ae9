"""Studies: one grid driver over tasks (classification, segmentation).

A task (``grid.Task``) says how to load and check its data, split it, and fine-tune and score one
grid cell; the driver (``grid.run_grid``) does everything else: run directory, pretraining once,
the fold x seed x fraction x init loop, resume, results and report. A new downstream task is one
more module and one more entry in ``TASKS``.
"""

from __future__ import annotations

from pathlib import Path

from medssl.config import StudyConfig
from medssl.data.pool import folder_pool
from medssl.data.types import PretrainData
from medssl.errors import MedsslError
from medssl.methods import method_config
from medssl.studies.grid import Cell, Pretrained, Task, run_grid
from medssl.studies.pretraining import NO_VALIDATION, build_backbone, pretrain, runtime
from medssl.studies.sweep import run_grid_config
from medssl.studies.tasks import TASKS, check_study, task_for


def pretrain_pool(cfg: StudyConfig) -> PretrainData:
    """What ``medssl pretrain`` trains on: an unlabelled folder (``data.format: folder``), else the
    task's pool (classification: the training split; segmentation: every image)."""
    if cfg.data.format != "folder":
        return task_for(cfg).pretrain_pool(cfg, check_study(cfg), None)
    method_config(cfg.pretrain.method, cfg.pretrain.method_args)
    runtime(cfg)
    if cfg.pretrain.select_on == "val_knn":
        raise MedsslError(NO_VALIDATION)
    if not cfg.data.path or not Path(cfg.data.path).is_dir():
        raise MedsslError(f"data.path: {cfg.data.path!r} is not a folder (data.format=folder)")
    pool = folder_pool(Path(cfg.data.path), cfg.data.size, storage=cfg.data.storage, workers=cfg.data.workers,
                       series=cfg.data.dicom_series)
    build_backbone(cfg.model, pool.spatial_dims, pool.in_channels, pool.size)  # unknown names fail here
    return pool


def run_study(cfg: StudyConfig, overwrite: bool = False, resume: bool = False) -> Path:
    """Run study ``cfg`` (pretrain once, then every grid cell; with a ``grid`` section, one study per
    dataset x method, reported together); return the finished run directory."""
    if cfg.grid.datasets or cfg.grid.methods:
        return run_grid_config(cfg, overwrite, resume)
    return run_grid(cfg, task_for(cfg), overwrite, resume)


__all__ = ["TASKS", "Cell", "Pretrained", "Task", "build_backbone", "check_study", "pretrain",
           "pretrain_pool", "run_study", "task_for"]
