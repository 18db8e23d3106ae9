"""Frozen-feature quality along one pretraining: does a pretext help early and hurt later?

Replays a ``methods_knn`` entry's schedule (its planned epochs, cosine decay, warm-up, seed) without
the wall-clock cut and scores the encoder at ``--points`` evenly spaced epochs and at epoch 0 (the random-init
encoder of that seed, the ``random-init`` row of ``methods_knn``): kNN AUC (k=20, Wu et al. 2018
vote, full train split as the bank) on the validation and on the test split. A curve that rises
then falls says the pretext learns something useful first and a shortcut after; a curve that never
rises says it learns nothing the labels care about. Only the validation column may choose an epoch.

    MEDSSL_DATA_DIR=../shared/data python benchmarks/pretext_curve.py --dataset adrenalmnist3d \\
        --methods rotation,jigsaw --from benchmarks/results/methods_knn_5min.json \\
        --out benchmarks/results/pretext_curve_adrenal.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from methods_knn import new_model, schedule

from medssl.data.loaders import TensorBatches
from medssl.data.medmnist import load_medmnist
from medssl.data.types import ClassificationData
from medssl.engine import fit, resolve_device, resolve_precision
from medssl.eval.probes import extract_features, knn_probe


def knn_scores(backbone: torch.nn.Module, data: ClassificationData, precision: torch.dtype | None) -> dict:
    """Validation and test kNN AUC (k=20) with the full train split as the bank."""
    feats = {s: extract_features(backbone, getattr(data, s).images, precision=precision)
             for s in ("train", "val", "test")}
    y = {s: getattr(data, s).labels.numpy() for s in ("train", "val", "test")}
    return {f"{s}_knn_auc": knn_probe(feats["train"], y["train"], feats[s], y[s], data.num_classes, 20)["auc"]
            for s in ("val", "test")}


def curve(entry: str, data: ClassificationData, epochs: int, every: int, batch_size: int, seed: int,
          device: torch.device, precision: torch.dtype | None) -> list[dict]:
    """Scores at epoch 0 and after every ``every``-th epoch (and the last) of one pretraining."""
    backbone, model = new_model(entry, data, seed)
    backbone.to(device)
    points = [{"epoch": 0, **knn_scores(backbone, data, precision)}]
    spec = schedule(epochs, batch_size)  # the grid entry's recipe

    def on_epoch_end(epoch: int) -> dict:
        if (epoch + 1) % every == 0 or epoch + 1 == epochs:
            points.append({"epoch": epoch + 1, **knn_scores(backbone, data, precision)})
            print(entry, json.dumps(points[-1]), flush=True)
        return {}

    batches = TensorBatches(data.train.images, None, batch_size, seed, device=device)
    fit(model, batches, spec, None, device=device,
        precision=precision, checkpoint=False, on_epoch_end=on_epoch_end, desc=f"{data.name} {entry}")
    return points


def planned_epochs(results: Path, dataset: str, entry: str, seed: int) -> int:
    rows = json.loads(results.read_text())["rows"]
    for r in rows:
        if (r["dataset"], r["method"], r["seed"]) == (dataset, entry, seed):
            return r["planned_epochs"]
    raise SystemExit(f"{results}: no row for {dataset} {entry} seed {seed}")


def write(out: Path, meta: dict, runs: list[dict]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "runs": runs}, indent=2) + "\n")
    lines = [f"# kNN AUC along pretraining ({meta['dataset']}, seed {meta['seed']}, {meta['date']})", "",
             f"`{meta['command']}`", "",
             "Each method replays its `methods_knn` 5-minute entry's schedule (planned epochs, cosine, "
             "warm-up, seed) to the end without the wall-clock cut. Epoch 0 is the random-init encoder. "
             "kNN: k=20, Wu et al. 2018 vote, full train split as the bank. One pretraining seed, no "
             "interval: the points of a curve share one run. Pretraining saw the train images only "
             "(no labels); test is reported, never used to choose.", ""]
    for run in runs:
        best = max(run["points"], key=lambda p: p["val_knn_auc"])
        lines += [f"## {run['method']} ({run['epochs']} epochs, {run['minutes']} min with scoring)", "",
                  "| epoch | val kNN AUC | test kNN AUC |", "|---|---|---|"]
        lines += [f"| {p['epoch']} | {p['val_knn_auc']:.3f} | {p['test_knn_auc']:.3f} |"
                  for p in run["points"]]
        lines += ["", f"Best validation epoch: {best['epoch']} (test {best['test_knn_auc']:.3f}; "
                  f"epoch 0 test {run['points'][0]['test_knn_auc']:.3f}).", ""]
    out.with_suffix(".md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--methods", required=True, help="comma-separated methods_knn entries")
    parser.add_argument("--from", dest="results", required=True, type=Path,
                        help="methods_knn results JSON whose planned_epochs each entry replays")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--points", type=int, default=10, help="scored epochs besides epoch 0")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--precision", default="auto", help="auto, bf16, fp16 or fp32")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    data = load_medmnist(args.dataset)
    meta = {"dataset": data.name, "seed": args.seed, "date": time.strftime("%Y-%m-%d"),
            "precision": "bf16" if precision else "fp32", "torch": torch.__version__,
            "command": "python benchmarks/pretext_curve.py " + " ".join(
                f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("results",))
            + f" --from {args.results}"}
    runs: list[dict] = []
    for entry in [m.strip() for m in args.methods.split(",") if m.strip()]:
        epochs = planned_epochs(args.results, data.name, entry, args.seed)
        t0 = time.monotonic()
        points = curve(entry, data, epochs, max(1, math.ceil(epochs / args.points)), args.batch_size,
                       args.seed, device, precision)
        runs.append({"method": entry, "epochs": epochs, "minutes": round((time.monotonic() - t0) / 60, 1),
                     "points": points})
        write(args.out, meta, runs)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
