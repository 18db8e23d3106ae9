"""The downstream tasks by name (``cfg.task``)."""

from __future__ import annotations

from typing import Any

from medssl.config import StudyConfig
from medssl.errors import MedsslError
from medssl.studies.classification import ClassificationTask
from medssl.studies.grid import Task, check_grid
from medssl.studies.segmentation import SegmentationTask

TASKS: dict[str, Task] = {"classification": ClassificationTask(), "segmentation": SegmentationTask()}


def task_for(cfg: StudyConfig) -> Task:
    if cfg.task not in TASKS:
        raise MedsslError(f"task must be one of {', '.join(sorted(TASKS))}, got '{cfg.task}'")
    return TASKS[cfg.task]


def check_study(cfg: StudyConfig) -> Any:
    """Check config and data before any file is written; return the task's data."""
    return check_grid(cfg, task_for(cfg))
