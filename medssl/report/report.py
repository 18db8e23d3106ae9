"""``results.jsonl`` -> ``report.md`` (mean ± std over seeds) and a label-efficiency plot."""

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


def _table(summary: dict, protocol: str) -> list[str]:
    keys = sorted(k for k in summary if k[0] == protocol)
    if not keys:
        return []
    metrics = [m for m in METRICS if any(m in summary[k] for k in keys)]
    head = ["fraction", "init", "seeds", *metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in sorted(keys, key=lambda k: (k[2], k[1] != "ssl")):
        s = summary[key]
        n = next(iter(s.values()))[2]
        cells = [f"{key[2]:g}", key[1], str(n)]
        cells += [_fmt(s[m]) if m in s else "" for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


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


def plot_label_efficiency(summary: dict, path: Path, metric: str = "auc") -> None:
    """Metric vs label fraction: one line per (protocol, init), std over seeds as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    styles = {"finetune": "-", "linear": "--", "knn": ":"}
    for protocol in PROTOCOLS:
        for init in sorted({k[1] for k in summary if k[0] == protocol}):
            keys = sorted(k for k in summary if k[:2] == (protocol, init) and metric in summary[k])
            if not keys:
                continue
            x = [k[2] for k in keys]
            y = [summary[k][metric][0] for k in keys]
            e = [summary[k][metric][1] for k in keys]
            ax.errorbar(x, y, yerr=e, linestyle=styles[protocol], marker="o", capsize=3,
                        color="C0" if init == "ssl" else "C1", label=f"{init} / {protocol}")
    ax.set_xscale("log")
    fractions = sorted({k[2] for k in summary})
    ax.set_xticks(fractions, [f"{f:.0%}" if f >= 0.01 else f"{f:.1%}" for f in fractions])
    ax.minorticks_off()
    ax.set_xlabel("fraction of labelled training images")
    ax.set_ylabel(f"test {metric.upper()}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
    summary = summarise(rows)
    if summary:  # the one-line-per-fraction answer, kept at the top of report.md
        answer = [x.removeprefix("- ") for x in _delta_lines(summary)] or ["(no pair)"]
        blocks[2:2] = [("h2", "SSL vs scratch (fine-tuned AUC)"), ("list", answer)]
    path = run_dir / "report.md"
    atomic_write(path, lambda tmp: Path(tmp).write_text(to_markdown(blocks, run_dir)))
    title = run_dir.name.removesuffix(".incomplete")
    atomic_write(run_dir / "report.html", lambda tmp: Path(tmp).write_text(to_html(blocks, title)))
    return path
