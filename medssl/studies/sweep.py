"""A benchmark grid (``grid:`` in a config): datasets x methods, one study each, one report.

Each (dataset, method) is an ordinary study in ``<output_dir>/<name>/<dataset>_<method>/`` (its own
``.incomplete`` directory, resume and results); scratch is trained once per dataset, in the study
of its first method. When every study has finished, their rows are concatenated into
``<output_dir>/<name>/results.jsonl`` and one report is written from them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from medssl.config import StudyConfig, apply_overrides, from_dict, save_config, to_dict
from medssl.errors import MedsslError
from medssl.io import atomic_write
from medssl.report.report import write_report
from medssl.studies.grid import run_grid
from medssl.studies.rundir import adds_cells
from medssl.studies.tasks import check_study, task_for


def grid_studies(cfg: StudyConfig) -> list[StudyConfig]:
    """The study of every (dataset, method) of ``cfg.grid``, in order, each checked like a config."""
    if not cfg.grid.datasets or not cfg.grid.methods:
        raise MedsslError("grid: needs datasets and methods (or remove the grid section)")
    keys = {*cfg.grid.datasets, *cfg.grid.methods,
            *(f"{d}/{m}" for d in cfg.grid.datasets for m in cfg.grid.methods)}
    unknown = sorted(set(cfg.grid.overrides) - keys)
    if unknown:
        raise MedsslError(f"grid.overrides: {unknown[0]} is not a dataset, a method or a dataset/method "
                          "of the grid")
    studies = []
    for dataset in cfg.grid.datasets:
        for i, method in enumerate(cfg.grid.methods):
            d = to_dict(cfg)
            d.pop("grid")
            d.update(name=f"{dataset}_{method}", output_dir=str(Path(cfg.output_dir) / cfg.name))
            d["data"]["dataset"] = dataset
            if "+" in method:  # a weighted combination, equal weights unless overridden
                d["pretrain"]["method"] = "combo"
                d["pretrain"]["method_args"] = {"weights": dict.fromkeys(method.split("+"), 1.0)}
            else:
                d["pretrain"]["method"] = method
            if i > 0:  # scratch does not depend on the method: trained once per dataset
                d["finetune"]["inits"] = [x for x in d["finetune"]["inits"] if x != "scratch"]
            for key in (dataset, method, f"{dataset}/{method}"):
                apply_overrides(d, [*cfg.grid.overrides.get(key, [])])
            studies.append(from_dict(StudyConfig, d, f"grid {dataset} x {method}"))
    return studies


def run_grid_config(cfg: StudyConfig, overwrite: bool = False, resume: bool = False) -> Path:
    """Run every study of the grid (finished ones are kept with ``resume``); merge and report."""
    studies = grid_studies(cfg)
    for study in studies:
        check_study(study)  # every dataset and method is checked before anything runs
    root = Path(cfg.output_dir) / cfg.name
    if root.exists() and not (overwrite or resume):
        raise MedsslError(f"{root}: run directory exists; pass --overwrite, --resume or change 'name'")
    if overwrite and not resume:
        shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, root / "config.yaml")
    lines = []
    for study in studies:
        final = root / study.name
        if resume and (final / "results.jsonl").is_file():  # finished: kept, or given the new cells
            if adds_cells(study, final / "config.yaml"):
                final = run_grid(study, task_for(study), resume=True)
        else:
            final = run_grid(study, task_for(study), overwrite=True, resume=resume)
        lines += [line for line in (final / "results.jsonl").read_text().splitlines() if line.strip()]
    atomic_write(root / "results.jsonl", lambda tmp: Path(tmp).write_text("".join(f"{x}\n" for x in lines)))
    write_report(root)
    return root
