"""``results.jsonl`` -> ``report.md`` and ``report.html`` (classification: ``report.classification``;
segmentation: ``report.segmentation``)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from medssl.errors import MedsslError
from medssl.io import atomic_write

METRICS = ("auc", "acc", "balanced_acc", "sensitivity", "specificity", "fpr")
PROTOCOLS = ("finetune", "linear", "knn")


def read_results(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise MedsslError(f"{path}: results file not found")
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise MedsslError(f"{path}:{i}: not a JSON line") from err
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[tuple, dict[str, tuple[float, float, int]]]:
    """(protocol, init, fraction) -> metric -> (mean, std, n seeds)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if r.get("protocol") in PROTOCOLS:
            groups[(r["protocol"], r["init"], r["fraction"])].append(r)
    out = {}
    for key, group in groups.items():
        out[key] = {}
        for m in (*METRICS, "seconds"):
            vals = np.array([g[m] for g in group if m in g], dtype=float)
            if len(vals):
                std = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
                out[key][m] = (float(vals.mean()), std, len(vals))
    return out


def _fmt(stat: tuple[float, float, int]) -> str:
    """mean ± std, or the bare value for a single seed (no spread to show)."""
    mean, std, n = stat
    return f"{mean:.3f} ± {std:.3f}" if n > 1 else f"{mean:.3f}"


def _delta_lines(summary: dict) -> list[str]:
    """SSL minus scratch fine-tuning AUC per fraction: the number a user came for."""
    lines = []
    for frac in sorted({k[2] for k in summary if k[0] == "finetune"}):
        ssl, scr = summary.get(("finetune", "ssl", frac)), summary.get(("finetune", "scratch", frac))
        if ssl and scr:
            d = ssl["auc"][0] - scr["auc"][0]
            n = ssl["auc"][2]
            lines.append(f"- fraction {frac:g}: fine-tuned AUC, SSL − scratch = {d:+.3f} "
                         f"(SSL {_fmt(ssl['auc'])}, scratch {_fmt(scr['auc'])}, "
                         f"{n} seed{'s' if n > 1 else ''})")
    return lines


def write_report(run_dir: Path) -> Path:
    """Write ``report.md`` and a self-contained ``report.html`` (figures in ``figures/``) in ``run_dir``
    from ``results.jsonl`` and the cells' ``predictions.npz``."""
    from medssl.report.blocks import to_html, to_markdown
    from medssl.report.classification import report_blocks

    run_dir = Path(run_dir)
    rows = read_results(run_dir / "results.jsonl")
    if any(r.get("protocol") == "segmentation" for r in rows):
        from medssl.report.segmentation import write_segmentation_report

        return write_segmentation_report(run_dir, rows)
    figures = run_dir / "figures"
    figures.mkdir(exist_ok=True)
    blocks = report_blocks(run_dir, rows, figures)
    answer = []  # the one line per dataset, method and fraction a user came for, at the top
    for dataset in dict.fromkeys(r["dataset"] for r in rows if r.get("protocol") in PROTOCOLS):
        scratch = [r for r in rows if r.get("dataset") == dataset and r.get("init") == "scratch"]
        for method in dict.fromkeys(r["method"] for r in rows if r.get("dataset") == dataset
                                    and r.get("init") == "ssl"):
            ssl = [r for r in rows if r.get("dataset") == dataset and r.get("method") == method
                   and r.get("init") == "ssl"]
            prefix = f"{dataset}, {method}, " if len({r["dataset"] for r in rows if "dataset" in r}) > 1 \
                or len({r.get("method") for r in rows if r.get("init") == "ssl"}) > 1 else ""
            answer += [prefix + x.removeprefix("- ") for x in _delta_lines(summarise(ssl + scratch))]
    if answer:
        blocks[2:2] = [("h2", "SSL vs scratch (fine-tuned AUC)"), ("list", answer)]
    path = run_dir / "report.md"
    atomic_write(path, lambda tmp: Path(tmp).write_text(to_markdown(blocks, run_dir)))
    title = run_dir.name.removesuffix(".incomplete")
    atomic_write(run_dir / "report.html", lambda tmp: Path(tmp).write_text(to_html(blocks, title)))
    return path
