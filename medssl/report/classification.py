"""The classification report: ``results.jsonl`` plus each cell's ``predictions.npz`` -> blocks.

What the numbers mean (also written at the top of every report):
- ``±``: sample std over fine-tuning seeds. Each seed draws one labelled subset, shared by every arm.
- ``[lo, hi]``: 95% stratified bootstrap interval over test cases of the seed-mean metric (the
  trained models fixed): test-case variation only.
- SSL − scratch: the paired bootstrap over test cases (same resampled cases for both arms; its
  interval and two-sided p), the t-interval of per-seed differences (fine-tuning-seed variation),
  and for binary AUC DeLong's test per seed. No interval covers pretraining variation: one
  pretraining per method and dataset.
"""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from sklearn.metrics import confusion_matrix

from medssl.report import figures
from medssl.report.blocks import Block
from medssl.report.runtime import runtime_text
from medssl.stats.intervals import auc, bootstrap_ci, delong, mean_std, paired_bootstrap, paired_seed_diffs

PROTOCOLS = ("finetune", "linear", "knn")
PROTOCOL_NAMES = {"finetune": "fine-tuned", "linear": "linear probe", "knn": "kNN"}
N_BOOT = 1000


@dataclass
class Group:
    """The seeds of one (dataset, arm, protocol, fraction)."""

    dataset: str
    arm: str
    protocol: str
    fraction: float
    rows: dict[int, dict[str, Any]] = field(default_factory=dict)  # seed -> results row
    scores: dict[int, np.ndarray] = field(default_factory=dict)  # seed -> test probabilities [N, K]


@dataclass
class Dataset:
    name: str
    study_dirs: dict[str, Path]  # method -> study directory
    positive_class: int = 1
    y_test: np.ndarray | None = None
    groups: dict[tuple[str, str, float], Group] = field(default_factory=dict)  # (arm, protocol, fraction)

    @property
    def binary(self) -> bool:
        return self.y_test is not None and self.y_test.ndim == 1 and self.n_classes == 2

    @property
    def n_classes(self) -> int:
        g = next((g for g in self.groups.values() if g.scores), None)
        return next(iter(g.scores.values())).shape[1] if g else 0


def arm_of(row: dict[str, Any]) -> str:
    return "scratch" if row.get("init") == "scratch" else str(row.get("method"))


def study_dir(run_dir: Path, row: dict[str, Any]) -> Path:
    """A grid's study lives in ``<run>/<dataset>_<method>``; a single study is the run itself."""
    sub = run_dir / f"{row.get('dataset')}_{row.get('method')}"
    return sub if sub.is_dir() else run_dir


def collect(run_dir: Path, rows: list[dict[str, Any]]) -> dict[str, Dataset]:
    """Group the evaluation rows by dataset, arm, protocol and fraction; attach their predictions."""
    out: dict[str, Dataset] = {}
    for r in rows:
        if r.get("protocol") not in PROTOCOLS:
            continue
        sdir = study_dir(run_dir, r)
        ds = out.setdefault(r["dataset"], Dataset(r["dataset"], {}))
        ds.study_dirs.setdefault(str(r.get("method")), sdir)
        key = (arm_of(r), r["protocol"], float(r["fraction"]))
        g = ds.groups.setdefault(key, Group(r["dataset"], *key))
        g.rows[int(r["seed"])] = r
        pred = sdir / "finetune" / f"{r['init']}_f{r['fraction']:g}_s{r['seed']}" / "predictions.npz"
        if pred.is_file():
            with np.load(pred) as z:
                if f"{r['protocol']}_test" in z:
                    g.scores[int(r["seed"])] = z[f"{r['protocol']}_test"].astype(np.float64)
                    ds.y_test = z["test_y"]
    for ds in out.values():
        cfg_path = next(iter(ds.study_dirs.values())) / "config.yaml"
        if cfg_path.is_file():
            ds.positive_class = int(
                (yaml.safe_load(cfg_path.read_text()) or {}).get("data", {}).get("positive_class", 1)
            )
    return out


# --------------------------------------------------------------------------- statistics


def targets(ds: Dataset) -> tuple[np.ndarray, np.ndarray | None]:
    """(indicator targets [N, K'] for the AUC columns, strata [N] or None). Binary: the positive
    class only; multi-class: one-vs-rest per class; multi-label: the labels."""
    y = ds.y_test
    if y.ndim == 2:
        return y.astype(int), None
    if ds.binary:
        return (y == ds.positive_class).astype(int)[:, None], y
    return np.eye(ds.n_classes, dtype=int)[y.astype(int)], y


def columns(ds: Dataset, probs: np.ndarray) -> np.ndarray:
    """The probability columns that go with :func:`targets`."""
    return probs[:, [ds.positive_class]] if ds.binary else probs


def seed_mean_auc(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Batched metric: y [b, m, K] 0/1, s [b, m, seeds, K] -> [b] AUC averaged over columns with
    both classes (macro one-vs-rest) and over seeds."""
    a = auc(np.moveaxis(y, 1, -1)[:, None], np.moveaxis(s, 1, -1))  # [b, seeds, K]
    with np.errstate(all="ignore"):
        return np.nanmean(a.reshape(len(a), -1), axis=1)


def stacked(ds: Dataset, g: Group, seeds: list[int]) -> np.ndarray:
    return np.stack([columns(ds, g.scores[s]) for s in seeds], 1)  # [N, seeds, K']


def auc_interval(ds: Dataset, g: Group) -> tuple[float, float] | None:
    seeds = sorted(g.scores)
    if not seeds or ds.y_test is None:
        return None
    y, strata = targets(ds)
    _, lo, hi = bootstrap_ci(
        seed_mean_auc, y, stacked(ds, g, seeds), strata=strata, n_boot=N_BOOT, batched=True
    )
    return lo, hi


def versus_scratch(ds: Dataset, g: Group, scratch: Group) -> dict[str, Any] | None:
    """SSL − scratch on the seeds both have: paired bootstrap, per-seed t-interval, DeLong per seed."""
    seeds = sorted(set(g.scores) & set(scratch.scores))
    if not seeds:
        return None
    y, strata = targets(ds)
    boot = paired_bootstrap(
        seed_mean_auc,
        y,
        stacked(ds, g, seeds),
        stacked(ds, scratch, seeds),
        strata=strata,
        n_boot=N_BOOT,
        batched=True,
    )
    out = {"diff": boot["diff"], "lo": boot["lo"], "hi": boot["hi"], "p": boot["p"], "seeds": len(seeds)}
    if len(seeds) > 1:
        _, (tlo, thi), _ = paired_seed_diffs(
            {s: g.rows[s]["auc"] for s in seeds}, {s: scratch.rows[s]["auc"] for s in seeds}
        )
        out.update(t_lo=tlo, t_hi=thi)
    if ds.binary:
        out["delong"] = [
            delong(y[:, 0], g.scores[s][:, ds.positive_class], scratch.scores[s][:, ds.positive_class])["p"]
            for s in seeds
        ]
    return out


# --------------------------------------------------------------------------- blocks


def fmt(values: list[float], digits: int = 3) -> str:
    if not values:
        return ""
    mean, std, n = mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def _metric(g: Group, key: str) -> list[float]:
    return [r[key] for r in g.rows.values() if isinstance(r.get(key), (int, float))]


def _arms(ds: Dataset) -> list[str]:
    arms = sorted({a for a, _, _ in ds.groups}, key=lambda a: (a == "scratch", a))
    return arms


def dataset_blocks(ds: Dataset, out: Path) -> list[Block]:
    fractions = sorted({f for _, _, f in ds.groups})
    arms = _arms(ds)
    n_test = 0 if ds.y_test is None else len(ds.y_test)
    if ds.y_test is None:
        about = "this run saved no predictions (an older run): no intervals, curves or operating points"
    else:
        kind = "binary" if ds.binary else "multi-label" if ds.y_test.ndim == 2 else f"{ds.n_classes}-class"
        positive = f", positive class {ds.positive_class}" if ds.binary else ""
        about = f"{kind} task, {n_test} test cases{positive}"
    blocks: list[Block] = [("h2", ds.name), ("p", f"{about}; arms: {', '.join(arms)}.")]
    # label efficiency
    extra = [k for k in ("kappa", "ece", "balanced_acc") if any(_metric(g, k) for g in ds.groups.values())]
    header = ["fraction", "protocol", "arm", "labelled", "seeds", "AUC", "95% CI (test cases)", "acc", *extra]
    rows, curves = [], defaultdict(list)
    for f in fractions:
        for p in PROTOCOLS:
            for arm in arms:
                g = ds.groups.get((arm, p, f))
                if not g:
                    continue
                ci = auc_interval(ds, g)
                aucs = _metric(g, "auc")
                rows.append(
                    [
                        f"{f:.0%}",
                        PROTOCOL_NAMES[p],
                        arm,
                        str(next(iter(g.rows.values())).get("n_labelled", "")),
                        str(len(g.rows)),
                        fmt(aucs),
                        f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "",
                        fmt(_metric(g, "acc")),
                        *[fmt(_metric(g, k)) for k in extra],
                    ]
                )
                if ci and p in ("finetune", "linear"):
                    curves[(arm, p)].append((f, float(np.mean(aucs)), ci[0], ci[1]))
    blocks += [("h3", f"{ds.name}: label efficiency"), ("table", header, rows)]
    if curves:
        blocks.append(
            (
                "img",
                figures.label_efficiency(dict(curves), out / f"{ds.name}_label_efficiency.png", ds.name),
                f"{ds.name}: test AUC vs labelled fraction, bands = 95% bootstrap intervals over test cases",
            )
        )
    blocks += _delta_blocks(ds, fractions, arms)
    blocks += _second_test_blocks(ds, fractions, arms)
    if ds.binary:
        blocks += _operating_point_blocks(ds, fractions, arms)
    blocks += _figure_blocks(ds, fractions, arms, out)
    return blocks


def _delta_blocks(ds: Dataset, fractions: list[float], arms: list[str]) -> list[Block]:
    header = [
        "fraction",
        "protocol",
        "method",
        "seeds",
        "Δ AUC",
        "95% CI (paired bootstrap)",
        "p",
        "95% CI over seeds (t)",
        "DeLong p per seed",
        "differs from 0?",
    ]
    rows = []
    for f in fractions:
        for p in PROTOCOLS:
            scratch = ds.groups.get(("scratch", p, f))
            for arm in (a for a in arms if a != "scratch"):
                g = ds.groups.get((arm, p, f))
                v = versus_scratch(ds, g, scratch) if g and scratch else None
                if v is None:
                    continue
                t = f"[{v['t_lo']:+.3f}, {v['t_hi']:+.3f}]" if "t_lo" in v else ""
                verdict = "yes, SSL better" if v["lo"] > 0 else "yes, SSL worse" if v["hi"] < 0 else "no"
                rows.append(
                    [
                        f"{f:.0%}",
                        PROTOCOL_NAMES[p],
                        arm,
                        str(v["seeds"]),
                        f"{v['diff']:+.3f}",
                        f"[{v['lo']:+.3f}, {v['hi']:+.3f}]",
                        f"{v['p']:.3g}",
                        t,
                        ", ".join(f"{x:.2g}" for x in v.get("delong", [])),
                        verdict,
                    ]
                )
    if not rows:
        return []
    return [
        ("h3", f"{ds.name}: SSL − scratch"),
        (
            "p",
            "Paired on the same test cases and, per seed, the same labelled subset. "
            "“Differs from 0” reads the paired-bootstrap interval (test cases).",
        ),
        ("table", header, rows),
    ]


def _second_test_blocks(ds: Dataset, fractions: list[float], arms: list[str]) -> list[Block]:
    """``finetune.extra_test``: the same fine-tuned models scored on a second test set."""
    names = sorted({k.split("@", 1)[1] for g in ds.groups.values() for r in g.rows.values()
                    for k in r if k.startswith("auc@")})
    rows = []
    for name in names:
        for f in fractions:
            for arm in arms:
                g = ds.groups.get((arm, "finetune", f))
                if g and _metric(g, f"auc@{name}"):
                    rows.append([name, f"{f:.0%}", arm, str(len(g.rows)), fmt(_metric(g, "auc")),
                                 fmt(_metric(g, f"auc@{name}")), fmt(_metric(g, f"acc@{name}"))])
    if not rows:
        return []
    header = ["second test set", "fraction", "arm", "seeds", f"AUC on {ds.name}", "AUC there", "acc there"]
    return [("h3", f"{ds.name}: second test sets"), ("table", header, rows)]


def _operating_point_blocks(ds: Dataset, fractions: list[float], arms: list[str]) -> list[Block]:
    header = ["fraction", "protocol", "arm", "threshold", "sensitivity", "specificity", "FPR", "PPV"]
    rows = []
    for f in fractions:
        for p in ("finetune", "linear"):
            for arm in arms:
                g = ds.groups.get((arm, p, f))
                if not g or not _metric(g, "sensitivity@youden"):
                    continue
                for point, name in (
                    ("0.5", "0.5"),
                    ("youden", "Youden (val)"),
                    ("sens90", "90% sens. (val)"),
                ):
                    rows.append(
                        [
                            f"{f:.0%}",
                            PROTOCOL_NAMES[p],
                            arm,
                            name,
                            *[
                                fmt(_metric(g, f"{m}@{point}"))
                                for m in ("sensitivity", "specificity", "fpr", "ppv")
                            ],
                        ]
                    )
    if not rows:
        return []
    return [
        ("h3", f"{ds.name}: operating points"),
        (
            "p",
            "Thresholds chosen on the validation predictions only (Youden's J; the largest threshold "
            "reaching 90% validation sensitivity), applied to test; means ± std over seeds.",
        ),
        ("table", header, rows),
    ]


def _figure_blocks(ds: Dataset, fractions: list[float], arms: list[str], out: Path) -> list[Block]:
    blocks: list[Block] = []
    mid = fractions[len(fractions) // 2]
    seed0 = {arm: g for arm in arms if (g := ds.groups.get((arm, "finetune", mid))) and g.scores}
    if ds.binary and seed0:
        curves = {
            arm: ((ds.y_test == ds.positive_class).astype(int), g.scores[min(g.scores)][:, ds.positive_class])
            for arm, g in seed0.items()
        }
        blocks.append(
            (
                "img",
                figures.roc_pr(curves, out / f"{ds.name}_roc_pr.png", f"{ds.name}, {mid:.0%}"),
                f"{ds.name}: ROC and precision-recall of the fine-tuned models at {mid:.0%} labels "
                "(first seed)",
            )
        )
    if seed0 and ds.y_test is not None and ds.y_test.ndim == 1:
        mats = []
        for arm, g in seed0.items():
            seed = min(g.scores)
            probs, row = g.scores[seed], g.rows[seed]
            if ds.binary:
                pos = ds.positive_class
                for point in ("0.5", "youden", "sens90"):
                    thr = row.get(f"threshold@{point}", 0.5)
                    pred = np.where(probs[:, pos] >= thr, pos, 1 - pos)
                    mats.append((f"{arm} @ {point} ({thr:.2f})", _confusion(ds.y_test, pred, 2)))
            else:
                mats.append((f"{arm} (argmax)", _confusion(ds.y_test, probs.argmax(1), ds.n_classes)))
        names = [str(k) for k in range(ds.n_classes)]
        blocks.append(
            (
                "img",
                figures.confusions(mats, names, out / f"{ds.name}_confusion.png"),
                f"{ds.name}: confusion matrices of the fine-tuned models at {mid:.0%} labels (first seed)",
            )
        )
    top = fractions[-1]
    cal = {}
    for arm in arms:
        g = ds.groups.get((arm, "finetune", top))
        if g and g.scores and ds.y_test is not None and ds.y_test.ndim == 1:
            probs = np.concatenate([g.scores[s] for s in sorted(g.scores)])
            y = np.tile(ds.y_test, len(g.scores))
            cal[arm] = (probs.max(1), (probs.argmax(1) == y).astype(float))
    if cal:
        blocks.append(
            (
                "img",
                figures.calibration(cal, out / f"{ds.name}_calibration.png", f"{ds.name}, {top:.0%}"),
                f"{ds.name}: calibration of the fine-tuned models at {top:.0%} labels (all seeds pooled)",
            )
        )
    losses = {}
    for method, sdir in ds.study_dirs.items():
        log = sdir / "pretrain" / "log.jsonl"
        if log.is_file():
            pts = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
            pts = [p for p in pts if "loss" in p]
            if pts:
                losses[method] = (np.array([p["step"] for p in pts]), np.array([p["loss"] for p in pts]))
    if losses:
        blocks.append(
            (
                "img",
                figures.loss_curves(losses, out / f"{ds.name}_pretrain_loss.png", ds.name),
                f"{ds.name}: pretraining loss",
            )
        )
    for method, sdir in ds.study_dirs.items():
        emb = sdir / "embedding.npz"
        if emb.is_file():
            with np.load(emb) as z:
                panels = {k.removesuffix("_xy"): (z[k], z["labels"]) for k in z.files if k.endswith("_xy")}
                names = [str(n) for n in z["names"]] if "names" in z else []
            blocks.append(
                (
                    "img",
                    figures.embedding(
                        panels, names, out / f"{ds.name}_{method}_embedding.png", f"{ds.name}: {method}"
                    ),
                    f"{ds.name}: PCA of the test features, {method} encoder vs a random-init encoder",
                )
            )
        grid = sdir / "corruptions.png"
        if grid.is_file():  # copied beside the other figures: the report folder travels alone
            shutil.copyfile(grid, out / f"{ds.name}_{method}_corruptions.png")
            blocks.append(("img", out / f"{ds.name}_{method}_corruptions.png",
                           f"{ds.name}: the {method} corruptions and its restorations (test images)"))
    return blocks


def _confusion(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    return confusion_matrix(y.astype(int), pred.astype(int), labels=list(range(k)))


def compute_blocks(rows: list[dict[str, Any]]) -> list[Block]:
    header = [
        "dataset",
        "method",
        "pretrain steps",
        "pretrain s",
        "pretrain img/s",
        "fine-tunes",
        "fine-tune s",
        "fine-tune img/s",
        "params",
        "GFLOPs/sample",
        "peak MiB",
    ]
    table, chosen = [], []
    by_study: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        by_study[(r.get("dataset"), r.get("method"))].append(r)
    for (dataset, method), rs in by_study.items():
        pre = next((r for r in rs if r.get("protocol") == "pretrain"), {})
        ft = [r for r in rs if r.get("protocol") == "finetune"]
        if "selected_epoch" in pre:
            epoch = pre["selected_epoch"]
            which = "epoch 0 (the untrained encoder: no pretraining epoch scored above it)" if epoch == 0 \
                else f"epoch {epoch}"
            chosen.append(("p", f"{dataset} {method}: the encoder of pretraining {which} was kept, chosen by "
                                "leave-one-out kNN AUC on the validation images "
                                f"({pre['val_knn_auc']:.3f}; {pre['val_knn_auc_start']:.3f} before training; "
                                "`pretrain.select_on: val_knn`)."))
        table.append(
            [
                str(dataset),
                str(method),
                str(pre.get("steps", "")),
                f"{pre.get('seconds', 0):.0f}",
                f"{pre.get('img_per_s', 0):.0f}",
                str(len(ft)),
                f"{sum(r.get('seconds', 0) for r in ft):.0f}",
                fmt([r["img_per_s"] for r in ft if "img_per_s" in r], 0),
                str(ft[0].get("params", "")) if ft else "",
                f"{ft[0]['flops_per_sample'] / 1e9:.3f}" if ft and "flops_per_sample" in ft[0] else "",
                f"{max((r.get('peak_mem_mb', 0) for r in ft), default=0):.0f}",
            ]
        )
    return [
        ("h2", "Compute"),
        (
            "p",
            "Wall time and throughput on the machine that ran the study; FLOPs are forward FLOPs of one "
            "test image through the fine-tuned classifier; peak memory is the process's resident peak "
            f"on a CPU, the allocator's peak on a GPU. {runtime_text(rows)}".rstrip(),
        ),
        ("table", header, table),
        *chosen,
    ]


def report_blocks(run_dir: Path, rows: list[dict[str, Any]], out: Path) -> list[Block]:
    data = collect(run_dir, rows)
    meta = next((r for r in rows if r.get("protocol") in PROTOCOLS), {})
    name = run_dir.name.removesuffix(".incomplete")
    methods = sorted({str(r.get("method")) for r in rows if r.get("protocol") in PROTOCOLS})
    blocks: list[Block] = [
        ("h1", f"{name}: {', '.join(methods)} on {', '.join(data)}"),
        ("p", f"Backbone `{meta.get('backbone')}` (width {meta.get('width')}); test-split metrics."),
        ("h2", "How to read this report"),
        (
            "list",
            [
                "**±**: sample std over fine-tuning seeds; each seed draws one labelled subset, the same "
                "for every arm (SSL methods and scratch).",
                "**95% CI (test cases)**: stratified bootstrap over the test cases (1000 resamples) of the "
                "seed-mean AUC, the trained models held fixed: test-case variation only.",
                "**SSL − scratch**: paired bootstrap over test cases (interval and two-sided p), the "
                "t-interval of the per-seed differences (fine-tuning-seed variation) and, for binary "
                "tasks, DeLong's paired AUC test per seed. No interval includes pretraining variation "
                "(one pretraining per method and dataset).",
                "Pretraining saw the training split's images only, never validation or test images; "
                "model selection and operating points use the validation split only.",
                "AUC is binary, or macro one-vs-rest (multi-class), or macro over labels (multi-label).",
            ],
        ),
    ]
    for ds in data.values():
        blocks += dataset_blocks(ds, out)
    blocks += compute_blocks(rows)
    return blocks
