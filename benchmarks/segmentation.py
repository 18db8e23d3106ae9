"""Hippocampus (MSD Task04) segmentation benchmark: SSL vs scratch at 10% and 100% of the labels.

Runs the real segmentation study (``configs/hippocampus.yaml``) on a fixed held-out fold (fold 0,
the default) or on all 5 folds (``--folds all``), then writes Dice per class (mean ± std over
folds x seeds), IoU, HD95 and wall time to ``<out>.json`` and ``<out>.md``. Not a unit test.

    python benchmarks/segmentation.py                       # fixed fold 0 (~20-30 min on 2 cores)
    python benchmarks/segmentation.py --folds all           # 5-fold cross-validation (~5x longer)
    python benchmarks/segmentation.py --set finetune.epochs=20 --set pretrain.epochs=50
    python benchmarks/segmentation.py --rebuild             # .md (and .json notes) from the .json only

Reference: nnU-Net (Isensee et al., Nat. Methods 18:203, 2021) reports Dice ~0.90 (anterior) and
~0.89 (posterior) on the MSD Task04 test set; that is a different split (the 130 MSD test cases,
not available here), a full-size 3D U-Net trained for 1000 epochs with test-time mirroring and
ensembling, so read the comparison as a ceiling, not a like-for-like number.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from medssl.config import load_config, to_dict
from medssl.report.report import read_results
from medssl.report.segmentation import paired_dice, summarise_segmentation, validation_lines
from medssl.studies import run_study

DICE_RULE = "false positive on a case without the class = Dice 0; neither = left out (6a66d92)"
OLD_DICE_RULE = ("Scored before 6a66d92: a structure predicted in a case whose ground truth lacks it "
                 "was left out of that case's Dice (NaN) instead of scoring 0; this can only matter for a "
                 "test volume without one of the structures.")
NNUNET = {"source": "Isensee et al., nnU-Net, Nat. Methods 18:203 (2021), MSD Task04 test set",
          "dice_anterior": 0.90, "dice_posterior": 0.89, "dice_mean": 0.895}


def summarise(run: Path) -> dict:
    """results.jsonl -> {"rows", "summary": {"<init>@<fraction>": {metric: [mean, std, n]}}, ...}."""
    rows = read_results(run / "results.jsonl")
    summary = {f"{init}@{frac:g}": {k: list(v) for k, v in stats.items()}
               for (init, frac), stats in summarise_segmentation(rows).items()}
    pre = next((r for r in rows if r["protocol"] == "pretrain"), {})
    study = next((r for r in rows if r["protocol"] == "study"), {})
    seg = [r for r in rows if r["protocol"] == "segmentation"]
    paired = {f"{frac:g}": {"mean": m, "ci95": list(ci), "pairs": n}
              for frac, (m, ci, n) in paired_dice(rows).items()}
    return {"summary": summary, "paired_ssl_minus_scratch": paired, "pretrain_seconds": pre.get("seconds"),
            "study_seconds": study.get("seconds"), "folds": sorted({r["fold"] for r in seg}),
            "seeds": sorted({r["seed"] for r in seg}), "runs": seg}


def notes(result: dict) -> list[str]:
    """What the numbers cover, written from the run's config: the pretraining pool and the intervals."""
    cfg = result["config"]
    seg, ft = cfg["segmentation"], cfg["finetune"]
    folds = result["folds"]
    if cfg["pretrain"].get("checkpoint"):
        pool = (f"SSL encoder loaded from `{cfg['pretrain']['checkpoint']}`: which images it was "
                "pretrained on is not recorded here.")
    elif seg["pretrain_pool"] == "all":
        pool = (f"Pretraining saw the test fold's images: `segmentation.pretrain_pool: all` pretrains the "
                f"SSL encoder on the images (never the labels) of every case, including held-out test "
                f"fold(s) {folds}. This is transductive and favours SSL over scratch.")
    else:
        pool = (f"`segmentation.pretrain_pool: {seg['pretrain_pool']}`: the held-out test fold's images "
                "were left out of pretraining.")
    runs = len(ft["seeds"]) * len(folds)
    spread = ("each cell is a single fine-tuning run (no interval; run-to-run noise not measured)."
              if runs == 1 else f"± is the sample std over {runs} fine-tuning runs (seeds × folds) only.")
    seed = cfg["pretrain"].get("seed")  # older files have no pretrain.seed: the study seed
    seed = cfg["seed"] if seed is None else seed
    lines = [pool, f"One pretraining (seed {seed}) serves every SSL row; {spread} "
             "Pretraining-to-pretraining variation is not in any number here."]
    return lines + ([] if result.get("dice_rule") else [OLD_DICE_RULE])


def markdown(result: dict) -> str:
    """A short table: Dice per class at each fraction, SSL and scratch, plus the nnU-Net line."""
    s, cfg = result["summary"], result["config"]
    k = cfg["segmentation"]["folds"]
    resumed = " (the last part of a resumed run)" if result.get("resumed") else ""
    fold_text = (f"{k}-fold cross-validation" if len(result["folds"]) > 1
                 else f"fixed held-out fold {result['folds'][0]} of {k}")
    lines = [f"# Hippocampus (MSD Task04) segmentation: {cfg['pretrain']['method']} SSL vs scratch", "",
             f"{fold_text}, seeds {result['seeds']}; backbone `{cfg['model']['backbone']}` width "
             f"{cfg['model']['width']}, U-Net decoder; fine-tuning {cfg['finetune']['epochs']} epochs "
             f"(min {cfg['finetune']['min_steps']} steps), crop {cfg['segmentation']['crop']}. "
             f"Wall time {result['wall_seconds'] / 60:.1f} min{resumed} on {result['machine']['cpus']} "
             f"CPU cores (pretraining {(result['pretrain_seconds'] or 0) / 60:.1f} min).", "",
             *[f"- {n}" for n in notes(result)], "",
             "| fraction | init | runs | Dice anterior | Dice posterior | Dice mean | IoU mean | HD95 (mm) |",
             "|---|---|---|---|---|---|---|---|"]

    def fmt(stat, digits=3):
        return "–" if not stat else (f"{stat[0]:.{digits}f} ± {stat[1]:.{digits}f}" if stat[2] > 1
                                     else f"{stat[0]:.{digits}f}")

    for key in sorted(s, key=lambda k: (float(k.split("@")[1]), not k.startswith("ssl"))):
        init, frac = key.split("@")
        m = s[key]
        lines.append(f"| {frac} | {init} | {m['dice_mean'][2]} | {fmt(m.get('dice_anterior'))} | "
                     f"{fmt(m.get('dice_posterior'))} | {fmt(m.get('dice_mean'))} | "
                     f"{fmt(m.get('iou_mean'))} | {fmt(m.get('hd95_mean'), 2)} |")
    lines += ["", "SSL − scratch (mean Dice):", ""]
    for frac in sorted({k.split("@")[1] for k in s}, key=float):
        ssl, scr = s.get(f"ssl@{frac}"), s.get(f"scratch@{frac}")
        if ssl and scr:
            pair = result.get("paired_ssl_minus_scratch", {}).get(frac)
            ci = (f" [95% paired t-interval over {pair['pairs']} seed pairs: {pair['ci95'][0]:+.3f}, "
                  f"{pair['ci95'][1]:+.3f}]" if pair and pair["pairs"] > 1 else "")
            lines.append(f"- {frac}: {ssl['dice_mean'][0] - scr['dice_mean'][0]:+.3f}{ci}")
    if validation := validation_lines(result["runs"]):
        lines += ["", *validation]
    ref = result["reference"]
    lines += ["", f"Reference: {ref['source']}: Dice anterior {ref['dice_anterior']}, posterior "
              f"{ref['dice_posterior']} (mean ≈ {ref['dice_mean']}). Different split and a far larger "
              "training budget: a ceiling, not a like-for-like comparison."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/hippocampus.yaml")
    parser.add_argument("--folds", choices=["fixed", "all"], default="fixed",
                        help="fixed: held-out fold 0 only; all: 5-fold cross-validation")
    parser.add_argument("--out", default="benchmarks/results/segmentation_hippocampus",
                        help="output path without suffix (.json and .md are written)")
    parser.add_argument("--runs-dir", default="runs", help="where the study run directory goes")
    parser.add_argument("--fractions", default="[0.1, 1.0]", help="label fractions, a YAML list")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config overrides (repeatable)")
    parser.add_argument("--resume", action="store_true",
                        help="continue a killed run of the same config (finished cells are kept), or "
                             "add finetune.seeds or fractions to a finished one")
    parser.add_argument("--rebuild", action="store_true",
                        help="no study: rewrite <out>.md and the notes of <out>.json from <out>.json")
    args = parser.parse_args()
    out = Path(args.out)
    if args.rebuild:
        result = json.loads(out.with_suffix(".json").read_text())
        write(out, {**result, "notes": notes(result)})
        return
    overrides = [f"output_dir={args.runs_dir}", f"name=bench_segmentation_{args.folds}",
                 f"finetune.fractions={args.fractions}", "finetune.inits=[ssl, scratch]", *args.set]
    cfg = load_config(args.config, overrides)
    cfg.segmentation.test_folds = [0] if args.folds == "fixed" else list(range(cfg.segmentation.folds))
    t0 = time.perf_counter()
    run = run_study(cfg, overwrite=not args.resume, resume=args.resume)
    result = {**summarise(run), "wall_seconds": time.perf_counter() - t0, "resumed": args.resume,
              "run_dir": str(run),
              "dice_rule": DICE_RULE,
              "config": to_dict(cfg), "reference": NNUNET,
              "machine": {"cpus": os.cpu_count(), "torch": torch.__version__,
                          "platform": platform.platform(),
                          "bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())}}
    write(out, {**result, "notes": notes(result)})


def write(out: Path, result: dict) -> None:
    """``<out>.json`` and ``<out>.md``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
