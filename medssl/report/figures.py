"""The report's figures (matplotlib, Agg backend): each function writes one PNG and returns its path."""

from __future__ import annotations

from pathlib import Path

import numpy as np

COLOURS = {"scratch": "#7f7f7f"}
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
STYLES = {"finetune": "-", "linear": "--", "knn": ":"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def colour(arm: str, arms: list[str]) -> str:
    if arm in COLOURS:
        return COLOURS[arm]
    others = [a for a in arms if a not in COLOURS]
    return PALETTE[others.index(arm) % len(PALETTE)] if arm in others else PALETTE[0]


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=75, bbox_inches="tight")  # the HTML embeds them: keep it small
    _plt().close(fig)
    return path


def label_efficiency(
    curves: dict[tuple[str, str], list[tuple[float, float, float, float]]],
    path: Path,
    title: str,
    metric: str = "AUC",
) -> Path:
    """curves[(arm, protocol)] = [(fraction, mean, lo, hi)]: lines with interval bands, log x."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    arms = sorted({a for a, _ in curves})
    for (arm, protocol), pts in sorted(curves.items()):
        pts = sorted(pts)
        x, y, lo, hi = (np.array(v, float) for v in zip(*pts, strict=True))
        c = colour(arm, arms)
        ax.plot(x, y, STYLES.get(protocol, "-"), marker="o", color=c, label=f"{arm} / {protocol}")
        ax.fill_between(x, lo, hi, color=c, alpha=0.12 if protocol == "finetune" else 0.06)
    fractions = sorted({p[0] for pts in curves.values() for p in pts})
    ax.set_xscale("log")
    ax.set_xticks(fractions, [f"{f:.0%}" for f in fractions])
    ax.minorticks_off()
    ax.set_xlabel("labelled training images")
    ax.set_ylabel(f"test {metric}")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def roc_pr(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str) -> Path:
    """curves[arm] = (y [N] 0/1, score [N]): ROC and precision-recall side by side."""
    from sklearn.metrics import auc, precision_recall_curve, roc_curve

    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 4))
    arms = sorted(curves)
    for arm in arms:
        y, s = curves[arm]
        fpr, tpr, _ = roc_curve(y, s)
        prec, rec, _ = precision_recall_curve(y, s)
        c = colour(arm, arms)
        a.plot(fpr, tpr, color=c, label=f"{arm} (AUC {auc(fpr, tpr):.3f})")
        b.plot(rec, prec, color=c, label=f"{arm} (AP {np.trapezoid(prec[::-1], rec[::-1]):.3f})")
    a.plot([0, 1], [0, 1], ":", color="#999")
    a.set(xlabel="false-positive rate", ylabel="sensitivity", title=f"ROC: {title}")
    b.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", title=f"PR: {title}")
    for ax in (a, b):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def confusions(mats: list[tuple[str, np.ndarray]], names: list[str], path: Path) -> Path:
    """Confusion matrices (rows: truth, columns: prediction), counts annotated."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(mats), figsize=(2.9 * len(mats) + 0.6, 3.1), squeeze=False)
    for ax, (title, m) in zip(axes[0], mats, strict=True):
        ax.imshow(m, cmap="Blues")
        for (i, j), v in np.ndenumerate(m):
            ax.text(
                j,
                i,
                str(int(v)),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if v > m.max() / 2 else "black",
            )
        ax.set_xticks(range(len(names)), names, fontsize=7, rotation=30)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("predicted", fontsize=7)
        ax.set_ylabel("true", fontsize=7)
    return _save(fig, path)


def calibration(
    curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str, bins: int = 10
) -> Path:
    """Reliability diagram: curves[arm] = (confidence [N] of the predicted class, correct [N] 0/1)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    arms = sorted(curves)
    edges = np.linspace(0, 1, bins + 1)
    for arm in arms:
        conf, correct = curves[arm]
        which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
        xs = [conf[which == k].mean() for k in range(bins) if (which == k).any()]
        ys = [correct[which == k].mean() for k in range(bins) if (which == k).any()]
        ax.plot(xs, ys, marker="o", color=colour(arm, arms), label=arm)
    ax.plot([0, 1], [0, 1], ":", color="#999")
    ax.set(
        xlabel="confidence of the predicted class", ylabel="accuracy", title=title, xlim=(0, 1), ylim=(0, 1)
    )
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def loss_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str) -> Path:
    """Pretraining loss per method: curves[method] = (steps, loss); one panel each (scales differ)."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(curves), figsize=(3.6 * len(curves), 3), squeeze=False)
    for ax, (method, (x, y)) in zip(axes[0], sorted(curves.items()), strict=True):
        ax.plot(x, y, color="#1f77b4")
        ax.set(xlabel="step", ylabel="loss", title=f"{method}")
        ax.grid(True, alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def embedding(
    panels: dict[str, tuple[np.ndarray, np.ndarray]], names: list[str], path: Path, title: str
) -> Path:
    """2D PCA of test features coloured by label: panels[encoder] = (xy [N, 2], labels [N])."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.8 * len(panels), 3.6), squeeze=False)
    for ax, (name, (xy, labels)) in zip(axes[0], panels.items(), strict=True):
        for k, label in enumerate(names):
            sel = labels == k
            ax.scatter(xy[sel, 0], xy[sel, 1], s=5, alpha=0.6, color=PALETTE[k % len(PALETTE)], label=label)
        ax.set(title=name, xticks=[], yticks=[])
    axes[0][0].legend(fontsize=7, markerscale=2)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)
