"""The one study loop: check -> start the run -> pretrain once -> fold x seed x fraction x init.

Run directory (``<name>.incomplete`` until finished, then renamed to ``<name>``)::

    config.yaml                 the resolved config
    pretrain/                   log.jsonl encoder.safetensors checkpoint.safetensors rows.json
    <cell directories>          one per grid cell, named by the task; each ends with rows.json
    results.jsonl               one or more rows per cell, in grid order
    report.md                   made from results.jsonl alone
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import torch
from rich.console import Console

from medssl.config import StudyConfig
from medssl.data.types import PretrainData
from medssl.engine import precision_name
from medssl.engine.checkpoint import load_weights
from medssl.engine.dist import is_main, local_only, on_main, rank, wait_for_all, world_size
from medssl.errors import MedsslError
from medssl.methods import method_config
from medssl.studies.pretraining import check_selection, pretrain, runtime
from medssl.studies.rundir import append_row, finish_run, finished_rows, run_cell, start_run

console = Console(stderr=True)


@dataclass(frozen=True)
class Cell:
    """One grid cell: a test fold, a fine-tuning seed, a label fraction and an init."""

    fold: int
    seed: int
    fraction: float
    init: str  # "ssl" or "scratch"


@dataclass(frozen=True)
class Pretrained:
    """The pretrained weights a cell may load: the encoder, and the whole pretext checkpoint
    (decoder, detector heads) when the task asks for it."""

    encoder: dict[str, torch.Tensor]
    checkpoint: dict[str, torch.Tensor] | None = None


class Task(Protocol):
    """A downstream task. ``load`` checks the config and data before anything is written."""

    def load(self, cfg: StudyConfig) -> Any: ...

    def info(self, cfg: StudyConfig, data: Any) -> dict[str, Any]:
        """Fields that open every results row (dataset, method, backbone, ...)."""

    def folds(self, cfg: StudyConfig, data: Any, work: Path) -> dict[int, Any]:
        """Test fold -> split (saved under ``work`` where the task has its own splits)."""

    def pretrain_pool(self, cfg: StudyConfig, data: Any, folds: dict[int, Any] | None) -> PretrainData:
        """The unlabelled images to pretrain on (``folds`` None: every image, for ``medssl pretrain``)."""

    def needs_checkpoint(self, cfg: StudyConfig) -> bool:
        """Whether cells load the whole pretext checkpoint, not only the encoder."""

    def cell_dir(self, cell: Cell) -> Path: ...

    def run_cell(self, cfg: StudyConfig, data: Any, split: Any, cell: Cell, pretrained: Pretrained | None,
                 run_dir: Path) -> list[dict[str, Any]]:
        """Fine-tune and score one cell; rows carry their ``protocol``."""

    def describe(self, cell: Cell, rows: list[dict[str, Any]]) -> str: ...


def check_grid(cfg: StudyConfig, task: Task) -> Any:
    """Every check that can run before a file is written (the common config, then the task's data)."""
    method_config(cfg.pretrain.method, cfg.pretrain.method_args)
    check_selection(cfg)
    runtime(cfg)  # device and precision exist here
    for f in cfg.finetune.fractions:
        if not 0 < f <= 1:
            raise MedsslError(f"finetune.fractions: {f} is not in (0, 1]")
    if not cfg.finetune.inits or set(cfg.finetune.inits) - {"ssl", "scratch"}:
        raise MedsslError(f"finetune.inits: {cfg.finetune.inits}; use ssl and/or scratch")
    data = task.load(cfg)
    if cfg.pretrain.checkpoint:
        load_weights(Path(cfg.pretrain.checkpoint))
    return data


Rows = list[dict[str, Any]]


def stamped(cfg: StudyConfig, compute: Callable[[], Rows]) -> Callable[[], Rows]:
    """``compute`` whose rows also say the device and precision they were computed with (per cell: a
    study resumed on another machine mixes them, and the report lists what ran where)."""
    def rows() -> Rows:
        device, dtype = runtime(cfg)
        return [{**row, "device": device.type, "precision": precision_name(dtype)} for row in compute()]
    return rows


def run_grid(cfg: StudyConfig, task: Task, overwrite: bool = False, resume: bool = False) -> Path:
    """Run the whole study for ``task``; return the finished run directory. ``resume`` continues a
    killed one: finished cells are kept, the killed cell is redone, a killed pretraining continues."""
    data = check_grid(cfg, task)
    wait_for_all()  # ranks in step: its group is made here, not at the first long wait
    work, final = on_main(lambda: start_run(cfg, overwrite, resume))
    reopened = resume and any(p.name != "config.yaml" for p in work.iterdir())  # earlier parts exist
    t0 = time.perf_counter()
    info = task.info(cfg, data)
    results = work / "results.jsonl"
    folds = on_main(lambda: task.folds(cfg, data, work))
    pretrained = None
    if "ssl" in cfg.finetune.inits:  # on every rank: pretraining is data-parallel
        pretrained = _pretrained(cfg, task, data, folds, work, results, info, resume)
    cells = [(Cell(fold, seed, fraction, init), split) for fold, split in folds.items()
             for seed in cfg.finetune.seeds for fraction in cfg.finetune.fractions
             for init in cfg.finetune.inits]
    for i, (cell, split) in enumerate(cells):
        if i % world_size() != rank():
            continue  # under torchrun, cells are spread over the ranks, each trained by one process
        cell_dir = work / task.cell_dir(cell)
        with local_only():
            weights = pretrained if cell.init == "ssl" else None
            compute = partial(task.run_cell, cfg, data, split, cell, weights, cell_dir)
            rows = run_cell(cell_dir, stamped(cfg, compute))
        console.log(task.describe(cell, rows))
    wait_for_all()  # every rank's cells: of unknown length, hence not a plain (timed) barrier
    if not is_main():
        wait_for_all()  # rank 0 writes the results and the report
        return final
    for cell, _ in cells:  # every cell has its rows.json now (output_dir is shared by all ranks)
        for row in finished_rows(work / task.cell_dir(cell)):
            append_row(results, {**info, **row})
    # seconds of this invocation; a resumed study's earlier parts are not in it
    append_row(results, {"protocol": "study", **info, "seconds": time.perf_counter() - t0,
                         "resumed": reopened})
    final = finish_run(work, final)
    wait_for_all()
    return final


def _pretrained(cfg: StudyConfig, task: Task, data: Any, folds: dict[int, Any], work: Path, results: Path,
                info: dict[str, Any], resume: bool) -> Pretrained:
    """Pretrain once (or take ``pretrain.checkpoint``); append the pretrain row; load the weights."""
    if cfg.pretrain.checkpoint:
        encoder_path = full_path = Path(cfg.pretrain.checkpoint)
        stats: dict[str, Any] = {"checkpoint": str(encoder_path)}
    else:
        run_dir = work / "pretrain"
        pool = task.pretrain_pool(cfg, data, folds)
        [stats] = run_cell(run_dir, stamped(cfg, lambda: [pretrain(cfg, pool, run_dir, resume)]),
                           clear=False)  # a killed pretraining continues from its checkpoint
        encoder_path, full_path = run_dir / "encoder.safetensors", run_dir / "checkpoint.safetensors"
    if is_main():
        append_row(results, {"protocol": "pretrain", **info, **stats})
    return Pretrained(load_weights(encoder_path),
                      load_weights(full_path) if task.needs_checkpoint(cfg) else None)
