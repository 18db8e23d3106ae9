"""Choose the fine-tuning recipe on validation data only: one pretrained encoder (and scratch),
several recipes, label fractions and seeds; mean validation AUC per recipe.

    python benchmarks/finetune_recipes.py --config configs/benchmark_medmnist.yaml \\
        --dataset breastmnist --encoder runs/.../pretrain/encoder.safetensors \\
        --set data.positive_class=0 --out benchmarks/results/finetune_recipes_breastmnist

Each recipe is a `medssl study` with ``pretrain.checkpoint`` (no pretraining, no probes) and the
recipe's ``finetune.*`` overrides. Only validation AUC (the fine-tuning's model-selection metric,
at its best epoch) is read and written: the test rows the study also computes are not looked at,
so choosing the recipe here never sees the test split.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from medssl.api import run_study

# name -> finetune overrides (applied to pretrained encoders; scratch ignores the encoder keys)
RECIPES: dict[str, list[str]] = {
    "plain": [],
    "lp-ft": ["finetune.head_init=probe"],
    "enc0.1": ["finetune.encoder_lr_scale=0.1"],
    "lp-ft+enc0.1": ["finetune.head_init=probe", "finetune.encoder_lr_scale=0.1"],
    "lp-ft+decay0.6": ["finetune.head_init=probe", "finetune.layer_decay=0.6"],
    "lp-ft+enc0.3+decay0.8": ["finetune.head_init=probe", "finetune.encoder_lr_scale=0.3",
                              "finetune.layer_decay=0.8"],
    "long+lp-ft+enc0.1": ["finetune.head_init=probe", "finetune.encoder_lr_scale=0.1",
                          "finetune.epochs=40", "finetune.min_steps=150", "finetune.patience=0.4"],
    "long": ["finetune.epochs=40", "finetune.min_steps=150", "finetune.patience=0.4"],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--encoder", required=True,
                        help="encoder.safetensors of the pretraining to fine-tune")
    parser.add_argument("--set", action="append", default=[], help="extra key=value overrides")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--inits", nargs="+", default=["ssl", "scratch"])
    parser.add_argument("--fractions", default="[0.01,0.1]")
    parser.add_argument("--seeds", default="[0,1,2]")
    parser.add_argument("--work", default="/tmp/medssl_recipes")
    parser.add_argument("--out", required=True, help="writes <out>.json and <out>.md")
    args = parser.parse_args(argv)
    results = []
    for init in args.inits:
        for name in args.recipes if init == "ssl" else [r for r in args.recipes if r in ("plain", "long")]:
            t0 = time.perf_counter()
            overrides = [f"data.dataset={args.dataset}", f"pretrain.checkpoint={args.encoder}",
                         f"finetune.inits=[{init}]", "finetune.knn=false",
                         f"finetune.fractions={args.fractions}", f"finetune.seeds={args.seeds}",
                         f"output_dir={args.work}", f"name={args.dataset}_{init}_{name}",
                         *args.set, *RECIPES[name]]
            run = run_study(args.config, overrides=overrides, overwrite=True)
            rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
            tuned = [r for r in rows if r.get("protocol") == "finetune"]
            for fraction in sorted({r["fraction"] for r in tuned}):
                vals = [r["val_auc"] for r in tuned if r["fraction"] == fraction]
                mean = statistics.mean(vals)
                results.append({"init": init, "recipe": name, "fraction": fraction, "val_auc": vals,
                                "mean": mean, "seconds": round(time.perf_counter() - t0, 1)})
                print(f"{init:8s} {name:24s} {fraction:5g} val AUC {mean:.3f} {vals}", flush=True)
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({"dataset": args.dataset, "encoder": args.encoder,
                                                    "config": args.config, "set": args.set,
                                                    "recipes": {k: RECIPES[k] for k in args.recipes},
                                                    "results": results}, indent=1))
    lines = [f"# Fine-tuning recipes on {args.dataset}: validation AUC (test never read)", "",
             f"Encoder `{args.encoder}`; config `{args.config}` {' '.join(args.set)}. Mean over seeds "
             f"{args.seeds} of the best-epoch validation AUC; recipes in "
             "`benchmarks/finetune_recipes.py`.", "",
             "| init | recipe | fraction | val AUC (mean) | per seed |", "|---|---|---|---|---|"]
    lines += [f"| {r['init']} | {r['recipe']} | {r['fraction']:g} | {r['mean']:.3f} | "
              f"{', '.join(f'{v:.3f}' for v in r['val_auc'])} |" for r in results]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
