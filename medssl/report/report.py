"""``results.jsonl`` -> ``report.md`` (mean ± std over seeds) and a label-efficiency plot."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from medssl.errors import MedsslError

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
    """Write ``report.md`` and ``label_efficiency.png`` in ``run_dir`` from ``results.jsonl``."""
    run_dir = Path(run_dir)
    rows = read_results(run_dir / "results.jsonl")
    if any(r.get("protocol") == "segmentation" for r in rows):
        from medssl.report.segmentation import write_segmentation_report

        return write_segmentation_report(run_dir, rows)
    summary = summarise(rows)
    meta = next((r for r in rows if r.get("protocol") in PROTOCOLS), {})
    pre = next((r for r in rows if r.get("protocol") == "pretrain"), None)
    study = next((r for r in rows if r.get("protocol") == "study"), None)
    name = run_dir.name.removesuffix(".incomplete")
    lines = [f"# {name}: {meta.get('method', '?')} on {meta.get('dataset', '?')}", ""]
    lines += [f"Backbone `{meta.get('backbone')}` (width {meta.get('width')}). Test-split metrics, "
              "mean ± sample std over seeds; binary metrics at the 0.5 threshold.", ""]
    lines += ["## SSL vs scratch", "", *(_delta_lines(summary) or ["- (no SSL/scratch pair)"]), ""]
    names = {"finetune": "Full fine-tuning (model selected on validation AUC)",
             "linear": "Linear probe on frozen features", "knn": "kNN on frozen features"}
    for protocol in PROTOCOLS:
        table = _table(summary, protocol)
        if table:
            lines += [f"## {names[protocol]}", "", *table, ""]
    lines += ["## Compute", ""]
    if pre and "seconds" in pre:
        lines.append(f"- pretraining: {pre['steps']} steps, {pre['seconds']:.0f} s, "
                     f"{pre['img_per_s']:.0f} img/s")
    ft = [r["seconds"] for r in rows if r.get("protocol") == "finetune"]
    if ft:
        lines.append(f"- fine-tuning: {len(ft)} runs, {sum(ft):.0f} s in all")
    if study:
        lines.append(f"- whole study: {study['seconds']:.0f} s")
    if summary:
        plot_label_efficiency(summary, run_dir / "label_efficiency.png")
        lines += ["", "![label efficiency](label_efficiency.png)"]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
