"""Choose the pretraining length on validation data only: one long pretraining with encoder
snapshots (``pretrain.snapshot_every``), each snapshot scored on the validation split.

    python benchmarks/pretrain_length.py --config configs/demo.yaml --epochs 800 --every 100 \\
        --out benchmarks/results/pretrain_length_breastmnist

Per snapshot (and the random-init encoder as epoch 0), frozen features of the training and
validation images:
- **probe**: the linear probe fitted on the ``--fraction`` labelled subset of each ``--seeds`` seed
  (the subsets the study's fine-tuning cells draw), validation AUC: the model LP-FT starts from;
- **kNN**: the top-20 cosine vote with the whole labelled training split as the bank, validation AUC.
The chosen snapshot has the best mean probe AUC (ties: the earlier). Pretraining sees the training
images only (no labels); the test split is never loaded, so the choice cannot have seen it.
Point ``pretrain.checkpoint`` of a study at the chosen snapshot to fine-tune it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

from medssl.api import load_encoder, study_config
from medssl.cli import main as medssl_main
from medssl.data.subsets import label_fraction_indices
from medssl.engine import seed_everything
from medssl.eval.probes import extract_features, fit_linear_probe, knn_vote
from medssl.stats.metrics import classification_metrics
from medssl.studies.classification import ClassificationTask
from medssl.studies.pretraining import build_backbone


def score(backbone, data, positive: int, fraction: float, seeds: list[int]) -> dict:
    """Validation AUC of the ``fraction`` linear probe per seed and of the full-bank kNN."""
    train = extract_features(backbone, data.train.images)
    val = extract_features(backbone, data.val.images)
    y, y_val = data.train.labels.numpy(), data.val.labels.numpy()

    def auc(p: np.ndarray) -> float:
        return float(classification_metrics(y_val, p, positive)["auc"])

    probe = []
    for seed in seeds:
        idx = label_fraction_indices(data.train.labels, fraction, seed)
        probe.append(auc(fit_linear_probe(train[idx], y[idx], val, y_val, data.num_classes,
                                          positive).val_probs))
    return {"probe_val_auc": probe, "probe_mean": statistics.mean(probe),
            "knn_val_auc": auc(knn_vote(train, y, val, data.num_classes, 20))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="study YAML (its data, model and pretrain)")
    parser.add_argument("--set", action="append", default=[], help="extra key=value overrides")
    parser.add_argument("--epochs", type=int, required=True, help="the pretraining's planned epochs")
    parser.add_argument("--every", type=int, required=True, help="snapshot every this many epochs")
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--run-dir", default="runs/pretrain_length")
    parser.add_argument("--out", required=True, help="writes <out>.json and <out>.md")
    args = parser.parse_args(argv)
    sets = [*args.set, f"pretrain.epochs={args.epochs}", f"pretrain.snapshot_every={args.every}"]
    cfg = study_config(args.config, sets)
    t0 = time.perf_counter()
    shutil.rmtree(args.run_dir, ignore_errors=True)  # a fresh run each time
    argv_pretrain = ["pretrain", args.config, "--out", args.run_dir]
    if medssl_main([*argv_pretrain, *[a for s in sets for a in ("--set", s)]]):
        return 1
    seconds = time.perf_counter() - t0
    data = ClassificationTask().load(cfg)  # its test split is never scored here
    run = Path(args.run_dir)
    candidates = [(0, None)] + [(int(p.stem[-4:]), p) for p in sorted((run / "snapshots").iterdir())]
    if args.epochs % args.every:
        candidates.append((args.epochs, run / "encoder.safetensors"))
    rows = []
    seed_everything(cfg.seed)
    for epoch, path in candidates:
        backbone = build_backbone(cfg.model, data.spatial_dims, data.in_channels, data.size) if path is None \
            else load_encoder(path).backbone
        rows.append({"epoch": epoch, "path": str(path) if path else "random-init",
                     **score(backbone.eval(), data, cfg.data.positive_class, args.fraction, args.seeds)})
        r = rows[-1]
        print(f"epoch {epoch:5d}  probe {r['probe_mean']:.3f} {r['probe_val_auc']}  "
              f"kNN {r['knn_val_auc']:.3f}", flush=True)
    best = max(rows[1:], key=lambda r: (r["probe_mean"], -r["epoch"]))
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    ips = [r["img_per_s"] for r in log if "img_per_s" in r]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({
        "config": args.config, "set": sets, "fraction": args.fraction, "seeds": args.seeds,
        "pretrain_seconds": round(seconds, 1), "img_per_s": ips[-1] if ips else None,
        "chosen": best, "rows": rows}, indent=1))
    lines = [f"# Pretraining length on {data.name}: validation AUC of the snapshots (test never read)", "",
             f"`python benchmarks/pretrain_length.py --config {args.config} --epochs {args.epochs} "
             f"--every {args.every}{''.join(' --set ' + s for s in args.set)}`; pretraining "
             f"{seconds / 60:.0f} min. One pretraining (seed {cfg.seed}) on the {len(data.train.images)} "
             f"training images (no labels, never validation or test); every snapshot is a point of the "
             f"same {args.epochs}-epoch cosine schedule, not a shorter run.", "",
             f"probe = validation AUC of the linear probe on the {args.fraction:g} labelled subset of "
             f"seeds {args.seeds} (mean; per seed in brackets); kNN = top-20 cosine vote, whole training "
             f"split as the bank. Intervals: none; the spread over probe seeds is the per-seed list.", "",
             "| epoch | probe (mean) | probe per seed | kNN |", "|---|---|---|---|"]
    lines += [f"| {r['epoch']} | {r['probe_mean']:.3f} | {', '.join(f'{a:.3f}' for a in r['probe_val_auc'])} "
              f"| {r['knn_val_auc']:.3f} |" for r in rows]
    lines += ["", f"Chosen (best mean probe AUC): epoch {best['epoch']}, `{best['path']}`."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"chosen: epoch {best['epoch']} {best['path']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
