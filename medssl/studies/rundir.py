"""Run directories: written as ``<name>.incomplete`` and renamed to ``<name>`` only when finished.

A study is a grid of cells (pretraining, then one cell per fold x seed x fraction x init). Each
finished cell leaves ``rows.json`` in its directory; ``--resume`` reuses those, redoes the cell that
was killed, continues a killed pretraining from its checkpoint, and rebuilds ``results.jsonl`` in
grid order, so a resumed study writes the same results as an uninterrupted one. ``--resume`` of a
finished run whose config adds fine-tuning seeds or label fractions (and changes nothing else)
reopens it and runs only the new cells, against the same pretraining.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from medssl.config import StudyConfig, save_config, to_dict
from medssl.engine.dist import is_main
from medssl.errors import MedsslError
from medssl.io import atomic_write
from medssl.report.report import write_report

GROWABLE = ("seeds", "fractions")  # finetune keys that --resume may add to


def start_run(cfg: StudyConfig, overwrite: bool, resume: bool = False) -> tuple[Path, Path]:
    """Create ``<output_dir>/<name>.incomplete`` holding ``config.yaml``; return (work, final).

    With ``resume``, reopen ``<name>.incomplete`` if it is there, or else the finished ``<name>``,
    when ``cfg`` is the config that made it or only adds fine-tuning seeds or fractions to it.
    """
    final = Path(cfg.output_dir) / cfg.name
    work = final.with_name(final.name + ".incomplete")
    incomplete = resume and (work / "config.yaml").is_file()  # a killed run (or a killed addition)
    if final.exists() and not overwrite and not incomplete:
        if not (resume and (final / "config.yaml").is_file() and adds_cells(cfg, final / "config.yaml")):
            what = "is finished; nothing to resume" if resume else "exists"
            raise MedsslError(f"{final}: run directory {what}; pass --overwrite or change 'name'")
        final.rename(work)  # reopened: killed from here on, it resumes as any .incomplete run
        incomplete = True
    if incomplete:
        if adds_cells(cfg, work / "config.yaml"):
            save_config(cfg, work / "config.yaml")
        (work / "results.jsonl").unlink(missing_ok=True)  # rebuilt from the finished cells
        return work, final
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    save_config(cfg, work / "config.yaml")
    return work, final


def adds_cells(cfg: StudyConfig, path: Path) -> bool:
    """True when ``cfg`` adds fine-tuning seeds or fractions to the run's config at ``path`` and
    differs in nothing else, False when it is the same config; a one-line error when it drops some
    or changes any other key."""
    new = to_dict(cfg)
    try:
        old = yaml.safe_load(path.read_text())
        olds = {key: old["finetune"][key] for key in GROWABLE}
    except (yaml.YAMLError, TypeError, KeyError) as err:
        raise MedsslError(f"{path}: not a readable run config ({type(err).__name__}); "
                          "pass --overwrite or change 'name'") from None
    grows = False
    for key, was in olds.items():
        now = new["finetune"][key]
        if not isinstance(was, list) or not set(was) <= set(now):
            raise MedsslError(f"{path}: the run has finetune.{key}={was!r}; --resume can add to it, not "
                              f"drop from it ({now!r}); pass --overwrite or change 'name'")
        grows |= set(now) > set(was)
        new["finetune"][key] = old["finetune"][key] = None
    _check_same_config(new, old, path)
    return grows


def _check_same_config(new: Any, old: Any, path: Path, key: str = "") -> None:
    if isinstance(new, dict) and isinstance(old, dict):
        for k in sorted(set(new) | set(old)):
            _check_same_config(new.get(k), old.get(k), path, f"{key}.{k}" if key else k)
    elif new != old:
        raise MedsslError(f"{path}: the run being resumed has {key}={old!r}, this config {new!r}; "
                          "resume with the same config or pass --overwrite")


def run_cell(cell_dir: Path, compute: Callable[[], list[dict[str, Any]]],
             clear: bool = True) -> list[dict[str, Any]]:
    """The result rows of one grid cell: read back from ``cell_dir/rows.json`` when an earlier
    (resumed) run finished it, else computed (in a cleared ``cell_dir`` if ``clear``: a killed cell
    starts again) and saved there atomically."""
    done = cell_dir / "rows.json"
    if done.is_file():
        return json.loads(done.read_text())
    if clear:
        shutil.rmtree(cell_dir, ignore_errors=True)
    rows = compute()
    if is_main():  # under torchrun: the rank that owns the cell (``local_only``), or rank 0
        atomic_write(done, lambda tmp: Path(tmp).write_text(json.dumps(rows)))
    return rows


def finished_rows(cell_dir: Path) -> list[dict[str, Any]]:
    """The rows a finished cell saved (another rank may have run it: ``output_dir`` must be shared)."""
    done = cell_dir / "rows.json"
    if not done.is_file():
        raise MedsslError(f"{done}: missing after every rank finished; under torchrun on several nodes, "
                          "output_dir must be on a file system that every node shares")
    return json.loads(done.read_text())


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
