"""Studies: one grid driver over tasks (classification, segmentation).

A task (``grid.Task``) says how to load and check its data, split it, and fine-tune and score one
grid cell; the driver (``grid.run_grid``) does everything else: run directory, pretraining once,
the fold x seed x fraction x init loop, resume, results and report. A new downstream task is one
more module and one more entry in ``TASKS``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medssl.config import StudyConfig
from medssl.errors import MedsslError
from medssl.studies.classification import ClassificationTask
from medssl.studies.grid import Cell, Pretrained, Task, check_grid, run_grid
from medssl.studies.pretrain import build_backbone, pretrain
from medssl.studies.segmentation import SegmentationTask

TASKS: dict[str, Task] = {"classification": ClassificationTask(), "segmentation": SegmentationTask()}


def task_for(cfg: StudyConfig) -> Task:
    if cfg.task not in TASKS:
        raise MedsslError(f"task must be one of {', '.join(sorted(TASKS))}, got '{cfg.task}'")
    return TASKS[cfg.task]


def check_study(cfg: StudyConfig) -> Any:
    """Check config and data before any file is written; return the task's data."""
    return check_grid(cfg, task_for(cfg))


def run_study(cfg: StudyConfig, overwrite: bool = False, resume: bool = False) -> Path:
    """Run study ``cfg`` (pretrain once, then every grid cell); return the finished run directory."""
    return run_grid(cfg, task_for(cfg), overwrite, resume)


__all__ = ["TASKS", "Cell", "Pretrained", "Task", "build_backbone", "check_study", "pretrain", "run_study",
           "task_for"]
