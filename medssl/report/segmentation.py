"""The segmentation report (``report.md`` and ``report.html``): Dice/IoU/HD95 per class, mean ± std
over seeds and folds, SSL − scratch Dice per label fraction, overlay PNGs. Reads ``results.jsonl``
rows only."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from medssl.io import atomic_write
from medssl.report.blocks import from_markdown, to_html
from medssl.report.runtime import runtime_text
from medssl.stats.intervals import paired_seed_diffs

EMPTY_RULE = ("Per case and class: a structure in only one of prediction and ground truth (missed or "
              "false positive) scores Dice 0, IoU 0 and HD95 = the image diagonal; a class in neither "
              "is NaN for that case and left out of the class's mean over cases.")


def summarise_segmentation(rows: list[dict[str, Any]]) -> dict[tuple[str, float], dict[str, tuple]]:
    """(init, fraction) -> metric -> (mean, sample std, n runs) over seeds x folds (NaNs skipped)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if r.get("protocol") == "segmentation":
            groups[(r["init"], r["fraction"])].append(r)
    out = {}
    for key, group in groups.items():
        metrics = [k for k in group[0] if k.startswith(("dice_", "iou_", "hd95_"))] + ["val_dice", "seconds"]
        out[key] = {}
        for m in metrics:
            vals = np.array([g[m] for g in group if g.get(m) is not None], dtype=float)
            vals = vals[np.isfinite(vals)]
            if len(vals):
                std = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
                out[key][m] = (float(vals.mean()), std, len(vals))
    return out


def _fmt(stat: tuple | None, digits: int = 3) -> str:
    if stat is None:
        return "–"
    mean, std, n = stat
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def segmentation_table(summary: dict, classes: list[str]) -> list[str]:
    """Markdown table: one line per (fraction, init); Dice per class + mean, IoU and HD95 means."""
    head = ["fraction", "init", "runs", *[f"Dice {c}" for c in classes], "Dice mean", "IoU mean",
            "HD95 mean", "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (init, frac) in sorted(summary, key=lambda k: (k[1], k[0] != "ssl")):
        s = summary[(init, frac)]
        n = s["dice_mean"][2] if "dice_mean" in s else 0
        cells = [f"{frac:g}", init, str(n), *[_fmt(s.get(f"dice_{c}")) for c in classes],
                 _fmt(s.get("dice_mean")), _fmt(s.get("iou_mean")), _fmt(s.get("hd95_mean"), 2),
                 f"{s['seconds'][0]:.0f}" if "seconds" in s else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def paired_dice(rows: list[dict[str, Any]]) -> dict[float, tuple[float, tuple[float, float], int]]:
    """fraction -> (mean SSL − scratch Dice, 95% t-interval, n pairs), paired by (fold, seed): both
    arms of a pair fine-tune on the same labelled cases. The interval covers fine-tuning seeds
    (and folds), not pretraining seeds; fractions without complete pairs are left out."""
    arms: dict[tuple[str, float], dict[tuple, float]] = defaultdict(dict)
    for r in rows:
        if r.get("protocol") == "segmentation" and np.isfinite(r.get("dice_mean", np.nan)):
            arms[(r["init"], r["fraction"])][(r["fold"], r["seed"])] = r["dice_mean"]
    out = {}
    for frac in sorted({f for _, f in arms}):
        ssl, scr = arms.get(("ssl", frac), {}), arms.get(("scratch", frac), {})
        if ssl and set(ssl) == set(scr):
            out[frac] = paired_seed_diffs(ssl, scr)
    return out


def delta_lines(summary: dict, rows: list[dict[str, Any]] = ()) -> list[str]:
    """SSL − scratch mean Dice per label fraction, with the paired interval when ``rows`` pair up."""
    lines, paired = [], paired_dice(list(rows))
    for frac in sorted({k[1] for k in summary}):
        ssl, scr = summary.get(("ssl", frac), {}), summary.get(("scratch", frac), {})
        if "dice_mean" in ssl and "dice_mean" in scr:
            d = ssl["dice_mean"][0] - scr["dice_mean"][0]
            ci = ""
            if frac in paired and paired[frac][2] > 1:
                lo, hi = paired[frac][1]
                ci = (f" [95% paired t-interval over {paired[frac][2]} seed x fold pairs: "
                      f"{lo:+.3f}, {hi:+.3f}]")
            lines.append(f"- fraction {frac:g}: mean Dice, SSL − scratch = {d:+.3f}{ci} "
                         f"(SSL {_fmt(ssl['dice_mean'])}, scratch {_fmt(scr['dice_mean'])}, "
                         f"{ssl['dice_mean'][2]} runs each)")
    return lines


# Validation Dice gained by the last check that counts as "still rising": neighbouring checks of a
# converged run differ by a few thousandths on a few dozen validation cases (Hippocampus, 33 cases).
RISING = 0.01


def selection_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Per (fraction, init): how many runs kept their last validation check and how much validation
    Dice the last check added over the one before it. Most runs kept the last check while Dice still
    rose by ``RISING`` or more: the fine-tuning budget, not the data, may be the limit (rows without
    ``val_curve`` skipped)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if r.get("protocol") == "segmentation" and len(r.get("val_curve") or []) >= 2:
            groups[(r["fraction"], r["init"])].append(r)
    lines = []
    for (frac, init), group in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] != "ssl")):
        last = sum(r["best_epoch"] == r["val_curve"][-1][0] for r in group)
        gain = float(np.mean([r["val_curve"][-1][1] - r["val_curve"][-2][1] for r in group]))
        line = (f"- fraction {frac:g}, {init}: {last} of {len(group)} runs kept the last of "
                f"{len(group[0]['val_curve'])} validation checks; the last check added {gain:+.3f} "
                "validation Dice (mean)")
        if 2 * last > len(group):
            line += ("; still rising at the end of the schedule: longer fine-tuning (finetune.min_steps, "
                     "finetune.epochs) may still help" if gain >= RISING else
                     f"; flat at the end (under {RISING:+.3f}): more steps are unlikely to help much")
        lines.append(line)
    return lines


def curve_lines(runs: list[dict[str, Any]]) -> list[str]:
    """One line per run with a ``val_curve``: validation Dice at every check, its step, the kept one."""
    lines = []
    for r in sorted((r for r in runs if r.get("val_curve")),
                    key=lambda r: (r["fraction"], r["init"] != "ssl", r["fold"], r["seed"])):
        # rows from before steps_per_epoch was recorded: the last check ends the run
        per_epoch = r.get("steps_per_epoch") or r["steps"] / (r["val_curve"][-1][0] + 1)
        checks = " ".join(f"{d:.3f}{'*' if e == r['best_epoch'] else ''} ({round((e + 1) * per_epoch)})"
                          for e, d in r["val_curve"])
        lines.append(f"- {r['fraction']:g} {r['init']} fold {r['fold']} seed {r['seed']}: {checks}")
    return lines


def validation_lines(runs: list[dict[str, Any]]) -> list[str]:
    """How the kept checkpoints were chosen: :func:`selection_lines`, then every run's
    :func:`curve_lines` (empty without runs of >= 2 validation checks)."""
    selection = selection_lines(runs)
    if not selection:
        return []
    return ["Model selection (validation Dice):", "", *selection, "",
            "Validation Dice at each check (step), per run; * = the kept check:", "", *curve_lines(runs)]


def _overlay_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Overlays of the first seed/fold of every (fraction, init), so the same cases line up."""
    seg = [r for r in rows if r.get("protocol") == "segmentation" and r.get("overlays")]
    if not seg:
        return []
    first = (seg[0]["fold"], seg[0]["seed"])
    lines = ["## Overlays (image | ground truth | prediction)", ""]
    for r in sorted((r for r in seg if (r["fold"], r["seed"]) == first),
                    key=lambda r: (r["fraction"], r["init"] != "ssl")):
        lines.append(f"{r['init']}, fraction {r['fraction']:g}, fold {r['fold']}, seed {r['seed']}:")
        lines += ["", *[f"![{Path(p).stem}]({p})" for p in r["overlays"]], ""]
    return lines


def write_segmentation_report(run_dir: Path, rows: list[dict[str, Any]]) -> Path:
    """Write ``report.md`` for a segmentation study from its ``results.jsonl`` rows."""
    seg = [r for r in rows if r.get("protocol") == "segmentation"]
    meta = seg[0] if seg else {}
    pre = next((r for r in rows if r.get("protocol") == "pretrain"), None)
    study = next((r for r in rows if r.get("protocol") == "study"), None)
    summary = summarise_segmentation(rows)
    classes = meta.get("classes", [])
    folds = sorted({r["fold"] for r in seg})
    name = run_dir.name.removesuffix(".incomplete")
    lines = [f"# {name}: {meta.get('method', '?')} → {meta.get('spatial_dims', '?')}D segmentation "
             f"on {meta.get('dataset', '?')}", ""]
    lines += [f"U-Net decoder on backbone `{meta.get('backbone')}` (width {meta.get('width')}). "
              f"Held-out test fold(s) {folds} of patient-level k-fold; model selected on validation "
              "Dice. Mean ± sample std over seeds × folds; HD95 in mm (pixels for 2D images). "
              "Label fraction = fraction of the fold's labelled training cases.", "",
              EMPTY_RULE, ""]
    ssl = next((r for r in seg if r["init"] == "ssl"), None)
    if ssl:
        lines += [f"SSL init: {ssl.get('encoder_tensors_loaded')} encoder tensors loaded from the "
                  f"pretrained encoder, {ssl.get('decoder_tensors_loaded')} decoder tensors from the "
                  "pretraining checkpoint.", ""]
    lines += ["## SSL vs scratch", "", *(delta_lines(summary, rows) or ["- (no SSL/scratch pair)"]), ""]
    lines += ["## Test metrics", "", *segmentation_table(summary, classes), ""]
    if selection := selection_lines(rows):
        lines += ["## Model selection (validation Dice)", "", *selection, ""]
    lines += _overlay_lines(rows)
    lines += ["## Compute", ""]
    if pre and "seconds" in pre:
        lines.append(f"- pretraining: {pre['steps']} steps on {pre.get('pool', '?')} unlabelled "
                     f"images/volumes, {pre['seconds']:.0f} s")
    if seg:
        lines.append(f"- fine-tuning: {len(seg)} runs, {sum(r['seconds'] for r in seg):.0f} s training, "
                     f"{sum(r.get('test_seconds', 0) for r in seg):.0f} s testing")
    if study:
        lines.append(f"- last resumed part of the study: {study['seconds']:.0f} s (earlier parts not counted)"
                     if study.get("resumed") else f"- whole study: {study['seconds']:.0f} s")
    if ran := runtime_text(rows):
        lines.append(f"- {ran}")
    text = "\n".join(lines) + "\n"
    path = run_dir / "report.md"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    html = to_html(from_markdown(text, run_dir), name)  # the same content, images embedded
    atomic_write(run_dir / "report.html", lambda tmp: Path(tmp).write_text(html))
    return path
