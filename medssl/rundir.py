"""Run directories: written as ``<name>.incomplete`` and renamed to ``<name>`` only when finished."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from medssl.config import StudyConfig, save_config
from medssl.errors import MedsslError
from medssl.report.report import write_report


def start_run(cfg: StudyConfig, overwrite: bool) -> tuple[Path, Path]:
    """Create a fresh ``<output_dir>/<name>.incomplete`` holding ``config.yaml``; return (work, final)."""
    final = Path(cfg.output_dir) / cfg.name
    if final.exists() and not overwrite:
        raise MedsslError(f"{final}: run directory exists; pass --overwrite or change 'name'")
    work = final.with_name(final.name + ".incomplete")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    save_config(cfg, work / "config.yaml")
    return work, final


def finish_run(work: Path, final: Path) -> Path:
    """Write the report from ``results.jsonl``, then give the run its final name."""
    write_report(work)
    if final.exists():
        shutil.rmtree(final)
    work.rename(final)
    return final


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON line to ``results.jsonl``."""
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
