"""Joint-embedding methods at the same wall-clock budget: kNN and linear-probe quality per method.

For each dataset: a random-init encoder row, then every method pretrained with the real engine
(``medssl.engine.fit``) for ``--budget-seconds`` of training, then a kNN (k=20) and a linear probe
on frozen features of the full train split, scored on the test split. The number of epochs is
planned from a short throughput probe so the cosine schedules nearly finish inside the budget;
``fit(max_seconds=...)`` enforces the budget. Not a unit test: numbers vary run to run on a
shared CPU, and one seed per method says little about small differences.

    MEDSSL_DATA_DIR=../shared/data python benchmarks/methods_knn.py \\
        --budget-seconds 120 --out benchmarks/results/methods_knn.json

``--seeds 0 1 2`` trains every entry (and the random-init encoder) once per seed; the table then
gives mean ± std over seeds and, per method, the paired kNN AUC difference to the random-init
encoder of the same seed with a t-interval over seeds. ``--resume`` keeps the rows already in
``--out`` and runs only the missing (dataset, method, seed) triples, and ``--max-minutes`` starts no
entry that would end past that many minutes: a long grid (21 entries x 2 datasets x 3 seeds x 5 min is
~11 h on 2 CPU cores) runs in chunks, one per invocation. Within a dataset the grid is seed-major
(every method's first seed, then every method's second), so an unfinished grid still covers every
method. ``--reference-seeds 3 4 ...`` adds random-init encoders of more seeds (an evaluation each,
no training): the table then also compares every entry with the random-init encoders of the seeds
it does not share, by a Welch interval, so the random-init encoder's own seed-to-seed spread no
longer rests on 3 values.

Writes the JSON and a markdown table next to it (``methods_knn.md``) after every row.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import yaml

from medssl.config import PretrainConfig
from medssl.data.loaders import TensorBatches, steps_per_epoch
from medssl.data.medmnist import load_medmnist
from medssl.data.types import ClassificationData
from medssl.engine import fit, resolve_device, resolve_precision, seed_everything
from medssl.errors import MedsslError
from medssl.eval.probes import extract_features, knn_probe, linear_probe, reestimate_bn
from medssl.eval.selection import ValKnnSelection
from medssl.methods import METHODS, create_method
from medssl.registry import create_backbone
from medssl.stats.intervals import mean_std, paired_seed_diffs, welch_interval

DEVICE = torch.device("cpu")  # set from --device in main()
REFERENCE_SECONDS = 60.0  # bound on one random-init evaluation for --max-minutes (10-20 s on 2 cores)
ENCODERS = {2: ("resnet18_small", 0.5), 3: ("resnet10", 0.5)}  # cheap choices (CALIBRATION.md)
VIT = ("vit_tiny", 1.0)  # for MAE, whose encoder must be a ViT
PRESETS = Path(__file__).resolve().parent.parent / "configs" / "presets"


def _preset_args(name: str) -> dict:
    return yaml.safe_load((PRESETS / f"{name}.yaml").read_text())["pretrain"]["method_args"]


# benchmark entry -> (method, method_args); plain method names map to (name, {}).
VARIANTS = {
    "mae_r0.75": ("mae", {"mask_ratio": 0.75}),
    "mae_r0.4": ("mae", {"mask_ratio": 0.4}),  # the ratio the reviews report best on X-ray/CT
    "combo_transvw_like": ("combo", "transvw_like"),
    "combo_swin_like": ("combo", "swin_like"),
}
DEFAULT = [m for m in METHODS if m not in ("mae", "combo")] + list(VARIANTS)
# Chen et al. 2019's decoder before classification (no U-Net skips); run on request, not by default
VARIANTS.update({f"{m}_plain": (m, {"decoder": "plain"}) for m in ("genesis", "context_restoration",
                                                                     "denoising")})


def resolve_entry(entry: str) -> tuple[str, dict]:
    method, args = VARIANTS.get(entry, (entry, {}))
    return method, _preset_args(args) if isinstance(args, str) else args


def encoder_for(method: str, spatial_dims: int) -> tuple[str, float]:
    return VIT if method == "mae" else ENCODERS[spatial_dims]
OPTIM_KEYS = ("optimizer", "lr", "weight_decay")  # PretrainConfig defaults, the same for every method
RESUME_KEYS = ("budget_seconds", "batch_size", "seeds", "precision", "optimizer", "knn", "select_on")  # match


def evaluate(backbone: torch.nn.Module, data: ClassificationData, precision: torch.dtype | None) -> dict:
    """kNN (k=20) and linear probe on frozen features: full train split -> test split; also the kNN
    AUC on the validation split (``val_knn_auc``), the number to choose a recipe by."""
    feats = {s: extract_features(backbone, getattr(data, s).images, precision=precision)
             for s in ("train", "val", "test")}
    y = {s: getattr(data, s).labels.numpy() for s in ("train", "val", "test")}
    knn = knn_probe(feats["train"], y["train"], feats["test"], y["test"], data.num_classes, 20)
    val = knn_probe(feats["train"], y["train"], feats["val"], y["val"], data.num_classes, 20)
    lin = linear_probe(feats["train"], y["train"], feats["val"], y["val"], feats["test"], y["test"],
                       data.num_classes)
    return {"knn_auc": knn["auc"], "knn_acc": knn["acc"], "linear_auc": lin["auc"], "linear_acc": lin["acc"],
            "val_knn_auc": val["auc"]}


def evaluate_bn(backbone: torch.nn.Module, data: ClassificationData, precision: torch.dtype | None) -> dict:
    """``evaluate`` after re-estimating BatchNorm statistics on the whole training images (a
    diagnostic for pretexts that train on tiles); keys prefixed ``bn_``."""
    scores = evaluate(reestimate_bn(backbone, data.train.images), data, precision)
    return {f"bn_{k}": scores[k] for k in ("knn_auc", "val_knn_auc", "linear_auc")}


def new_model(entry: str, data: ClassificationData, seed: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    seed_everything(seed)
    method, args = resolve_entry(entry)
    name, width = encoder_for(method, data.spatial_dims)
    backbone = create_backbone(name, data.spatial_dims, data.in_channels, width=width, img_size=data.size)
    return backbone, create_method(method, backbone, data.spatial_dims, data.size, args)


def schedule(epochs: int, batch_size: int) -> PretrainConfig:
    """Every entry's pretraining recipe: PretrainConfig defaults, warm-up 10% of epochs (at most 2)."""
    return PretrainConfig(epochs=epochs, batch_size=batch_size, warmup_epochs=min(2.0, 0.1 * epochs))


def pretrain(method: str, data: ClassificationData, budget: float, batch_size: int, seed: int,
             precision: torch.dtype | None, select: bool = False) -> tuple[torch.nn.Module, dict]:
    """Train ``method`` for ``budget`` seconds; returns the backbone and the training stats. ``select``:
    the backbone is the epoch with the best leave-one-out validation kNN AUC (``pretrain.select_on:
    val_knn``, the product's :class:`ValKnnSelection`; the scoring after each epoch counts in the
    budget, the one before training does not). Its scores are ``loo_val_knn_auc*``: ``val_knn_auc``
    is ``evaluate``'s (the train split as the bank)."""
    images = data.train.images
    probe_spec = PretrainConfig(epochs=1, batch_size=batch_size, warmup_epochs=0)
    _, probe = new_model(method, data, seed)  # throughput probe on 3 batches, then thrown away
    fit(probe, _batches(images[: batch_size * 3], batch_size, seed), probe_spec, None, device=DEVICE,
        precision=precision, checkpoint=False)
    ips = batch_size * 2 / max(1e-9, _time_steps(probe, images, batch_size, seed, precision))
    per_epoch = steps_per_epoch(len(images), batch_size, True)
    epochs = max(1, round(budget * ips / (per_epoch * batch_size)))
    spec = schedule(epochs, batch_size)
    backbone, model = new_model(method, data, seed)
    chosen = ValKnnSelection(backbone.to(DEVICE), data.val, data.num_classes, per_epoch=per_epoch,
                             precision=precision) if select else None
    if chosen is not None:
        chosen.start()
    result = fit(model, _batches(images, batch_size, seed), spec, None, device=DEVICE, precision=precision,
                 checkpoint=False, on_epoch_end=chosen,
                 max_seconds=budget, desc=f"{data.name} {method}")
    stats = {"planned_epochs": epochs, "epochs": round(result.steps / per_epoch, 2), "steps": result.steps,
             "seconds": round(result.seconds, 1), "img_per_s": round(result.images_per_second, 1),
             "last_loss": result.last_loss}
    if chosen is not None:
        backbone.load_state_dict(chosen.best.state)
        stats |= {"selected_epoch": chosen.best.epoch, "loo_val_knn_auc": chosen.best.score,
                  "loo_val_knn_auc_start": chosen.first}
    return backbone, stats


def _time_steps(model: torch.nn.Module, images: torch.Tensor, batch_size: int, seed: int,
                precision: torch.dtype | None) -> float:
    """Seconds for 2 more training steps of an already warmed-up model."""
    spec = PretrainConfig(epochs=1, batch_size=batch_size, warmup_epochs=0)
    return fit(model, _batches(images[: batch_size * 2], batch_size, seed + 1), spec, None, device=DEVICE,
               precision=precision, checkpoint=False).seconds


def _batches(images: torch.Tensor, batch_size: int, seed: int) -> TensorBatches:
    return TensorBatches(images, None, batch_size, seed, device=DEVICE)


Diff = tuple[float, float | None, float | None]  # mean difference, interval low, high


def paired(rows: list[dict], base: dict[tuple[str, int], float]) -> Diff | None:
    """Mean kNN AUC difference to the random-init encoder of the same backbone and seed, and its 95%
    t-interval over seeds (None, None with one paired seed; None without any)."""
    mine = {k: r["knn_auc"] for r in rows if (k := (r["backbone"], r["seed"])) in base}
    if len(mine) < 2:
        return next(((v - base[k], None, None) for k, v in mine.items()), None)
    mean, (low, high), _ = paired_seed_diffs(mine, {k: base[k] for k in mine})
    return mean, low, high


def unpaired(rows: list[dict], reference: list[dict]) -> Diff | None:
    """Mean kNN AUC difference to the random-init encoders (same backbone) of the seeds the entry
    does not share, and its 95% Welch interval; None with fewer than 2 values on either side."""
    seeds = {r["seed"] for r in rows}
    ref = [r["knn_auc"] for r in reference if r["backbone"] == rows[0]["backbone"] and r["seed"] not in seeds]
    if len(rows) < 2 or len(ref) < 2:
        return None
    return welch_interval([r["knn_auc"] for r in rows], ref)


def _verdict(d: Diff | None) -> str:
    # one seed has no interval: its sign alone says neither yes nor no
    return "" if d is None else "(1 seed)" if d[1] is None else "**no**" if d[0] <= 0 else \
        "yes" if d[1] > 0 else "unclear"


def _diff(d: Diff | None) -> str:
    return "" if d is None else f"{d[0]:+.3f}" + ("" if d[1] is None else f" [{d[1]:+.3f}, {d[2]:+.3f}]")


def _pm(values: list[float]) -> str:
    mean, std, n = mean_std(values)
    return f"{mean:.3f} ± {std:.3f}" if n > 1 else f"{mean:.3f}"


def write(out: Path, meta: dict, rows: list[dict]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    seeds = sorted(meta.get("seeds") or [meta.get("seed", 0)])  # pretraining seeds (older files: meta.seed)
    extra = sorted({r["seed"] for r in rows  # --reference-seeds
                    if r["method"] == "random-init" and r.get("seed", seeds[0]) not in seeds})
    lines = [f"# Methods at {meta['budget_seconds']:g} s of pretraining each ({meta['date']})", "",
             f"kNN ({meta.get('knn', 'k=20, sklearn 1/distance weights')}) and linear probe on frozen "
             "features, full train split -> test split. "
             "`> random` compares kNN AUC with the random-init encoder's.", ""]
    if len(seeds) > 1:
        lines += [f"Seeds {seeds}: every entry (and the random-init encoder) is pretrained once per "
                  "seed; ± is the std over seeds; `kNN − random [95% CI]` is the mean paired difference "
                  "to the random-init encoder of the same seed with a t-interval over those seeds "
                  "(pretraining and initialisation variation; the test images are fixed). `> random` is "
                  "yes when the interval excludes 0 above, **no** when the mean is not above 0, "
                  "unclear otherwise, and (1 seed) while an entry has only one seed. Nothing is chosen on "
                  "the test split.", ""]
    if len(seeds) > 1 and extra:
        lines += [f"Reference seeds {extra}: random-init encoders only (no pretraining); the random-init "
                  "rows' seed count and ± include them. `kNN − random, unpaired` is an entry's mean kNN "
                  "AUC minus the mean of the random-init encoders of every seed the entry does not share "
                  "(independent samples) with a 95% Welch interval, so the random-init encoder's own "
                  "seed-to-seed spread is measured on many seeds instead of the entry's few; "
                  "`> random, unpaired` reads like `> random` (blank below 2 seeds). No correction for "
                  "the many entries compared with one reference.", ""]
    if meta.get("select_on") == "val_knn":
        lines += ["Each entry's encoder is the pretraining epoch (0: before training) with the best "
                  "leave-one-out kNN AUC among the validation images (`pretrain.select_on: val_knn`; "
                  "validation labels only), not the last; `kept epoch` is its mean over seeds, `epochs` "
                  "the epochs trained in the budget (the scoring counts in it).", ""]
    if meta.get("note"):
        lines += [f"Note: {meta['note']}.", ""]
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        sub = [{"seed": meta.get("seed", 0), **r} for r in rows if r["dataset"] == dataset]
        base = {(r["backbone"], r["seed"]): r["knn_auc"] for r in sub if r["method"] == "random-init"}
        if len(seeds) > 1:
            randoms = [r for r in sub if r["method"] == "random-init"]
            wide = any(r["seed"] not in seeds for r in randoms)  # reference seeds: unpaired columns
            kept = any("selected_epoch" in r for r in sub)  # --select-on val_knn
            lines += [f"## {dataset}", "",
                      "| method | encoder | seeds | epochs | " + ("kept epoch | " if kept else "")
                      + "img/s | kNN AUC | linear AUC | kNN − random [95% CI] | > random |"
                      + (" kNN − random, unpaired [95% CI] | > random, unpaired |" if wide else ""),
                      "|---" * (9 + kept + 2 * wide) + "|"]
            for (method, backbone), group in _groups(sub).items():
                d = None if method == "random-init" else paired(group, base)
                u = None if method == "random-init" else unpaired(group, randoms)
                lines.append(
                    f"| {method} | {backbone} x{group[0]['width']} | {len(group)} | "
                    f"{_mean(group, 'epochs')} | " + (f"{_mean(group, 'selected_epoch')} | " if kept else "")
                    + f"{_mean(group, 'img_per_s')} | "
                    f"{_pm([r['knn_auc'] for r in group])} | {_pm([r['linear_auc'] for r in group])} | "
                    f"{_diff(d)} | {_verdict(d)} |" + (f" {_diff(u)} | {_verdict(u)} |" if wide else ""))
            lines.append("")
            continue
        val = any("val_knn_auc" in r for r in sub)  # rows since the validation kNN was added
        bn = any("bn_knn_auc" in r for r in sub)  # --bn-reestimate
        lines += [f"## {dataset}", "",
                  "| method | encoder | epochs | img/s | kNN AUC | kNN acc | linear AUC | linear acc "
                  + ("| val kNN AUC " if val else "")
                  + ("| kNN AUC, BN re-est. | val kNN AUC, BN re-est. " if bn else "") + "| > random |",
                  "|---" * (9 + val + 2 * bn) + "|"]
        for r in sub:
            beats = "" if r["method"] == "random-init" or (r["backbone"], r["seed"]) not in base else (
                "yes" if r["knn_auc"] > base[(r["backbone"], r["seed"])] else "**no**")
            lines.append(f"| {r['method']} | {r['backbone']} x{r['width']} | {r.get('epochs', '')} | "
                         f"{r.get('img_per_s', '')} | "
                         f"{r['knn_auc']:.3f} | {r['knn_acc']:.3f} | {r['linear_auc']:.3f} | "
                         f"{r['linear_acc']:.3f} | "
                         + (f"{r['val_knn_auc']:.3f} | " if "val_knn_auc" in r else "| " if val else "")
                         + (f"{r['bn_knn_auc']:.3f} | {r['bn_val_knn_auc']:.3f} | " if "bn_knn_auc" in r
                            else "| | " if bn else "")
                         + f"{beats} |")
        lines.append("")
    out.with_suffix(".md").write_text("\n".join(lines))


def _groups(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["backbone"]), []).append(r)
    return groups


def _mean(rows: list[dict], key: str) -> str:
    values = [r[key] for r in rows if key in r]
    return f"{np.mean(values):.1f}" if values else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-seconds", type=float, default=120.0, help="per method per dataset")
    parser.add_argument("--methods", default=",".join(DEFAULT),
                        help=f"comma-separated methods or variants ({', '.join(VARIANTS)}); default: all")
    parser.add_argument("--datasets", default="retinamnist,adrenalmnist3d")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--precision", default="auto", help="auto, bf16, fp16 or fp32")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--reference-seeds", type=int, nargs="+", default=[],
                        help="more random-init encoders (an evaluation each, no pretraining) for the "
                             "unpaired comparison")
    parser.add_argument("--resume", action="store_true", help="keep --out's rows, run only the missing ones")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="start no entry that would end past this many minutes (the rest: --resume)")
    parser.add_argument("--out", default="benchmarks/results/methods_knn.json")
    parser.add_argument("--bn-reestimate", action="store_true",
                        help="also score each encoder after re-estimating BatchNorm statistics on the "
                             "training images (bn_* keys; the main columns are unchanged)")
    parser.add_argument("--select-on", choices=("last", "val_knn"), default="last",
                        help="val_knn: keep each entry's pretraining epoch with the best leave-one-out "
                             "validation kNN AUC (pretrain.select_on), not the last")
    parser.add_argument("--note", default="", help="a sentence for meta.note, printed under the title")
    args = parser.parse_args()
    global DEVICE
    DEVICE = resolve_device(args.device)
    precision = resolve_precision(args.precision, DEVICE)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {', '.join(dict.fromkeys([*DEFAULT, *VARIANTS]))}")
    meta = {"budget_seconds": args.budget_seconds, "batch_size": args.batch_size, "seeds": args.seeds,
            "precision": "bf16" if precision else "fp32", "date": time.strftime("%Y-%m-%d"),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "processor": platform.processor(),
            "optimizer": {k: v for k, v in asdict(PretrainConfig()).items() if k in OPTIM_KEYS},
            "knn": "Wu et al. 2018 vote: k=20, weights exp(cos/0.07)"}
    if args.note:
        meta["note"] = args.note.rstrip(".")
    if args.select_on != "last":
        meta["select_on"] = args.select_on
    out, start = Path(args.out), time.monotonic()
    rows: list[dict] = []
    if args.resume and out.exists():
        old = json.loads(out.read_text())
        if {k: old["meta"].get(k) for k in RESUME_KEYS} != {k: meta.get(k) for k in RESUME_KEYS}:
            parser.error(f"{out}: made with other settings ({', '.join(RESUME_KEYS)}); no --resume")
        first = old["meta"]["date"].split(" to ")[0]
        rows = old["rows"]
        if "note" in old["meta"] and "note" not in meta:  # a resumed chunk keeps the note unless given anew
            meta["note"] = old["meta"]["note"]
        meta["date"] = meta["date"] if first == meta["date"] else f"{first} to {meta['date']}"
        earlier = old["meta"].get("reference_seeds", [])  # a resumed chunk keeps the earlier reference seeds
        args.reference_seeds = [*dict.fromkeys([*earlier, *args.reference_seeds])]
    if args.reference_seeds:
        meta["reference_seeds"] = args.reference_seeds
    done = {(r["dataset"], r["method"], r["backbone"], r["seed"]) for r in rows}

    def score(backbone: torch.nn.Module, data: ClassificationData) -> dict:
        return {**evaluate(backbone, data, precision),
                **(evaluate_bn(backbone, data, precision) if args.bn_reestimate else {})}

    def out_of_time(seconds: float = args.budget_seconds) -> bool:
        """Would an entry of ``seconds`` started now end past --max-minutes?"""
        return args.max_minutes is not None and time.monotonic() - start + seconds > 60 * args.max_minutes

    for flag in args.datasets.split(","):
        data = load_medmnist(flag.strip())
        for seed in dict.fromkeys([*args.seeds, *args.reference_seeds]):
            for name, width in dict.fromkeys(encoder_for(resolve_entry(m)[0], data.spatial_dims)
                                             for m in methods):
                if (data.name, "random-init", name, seed) in done:
                    continue
                if seed not in args.seeds and out_of_time(REFERENCE_SECONDS):
                    print(f"--max-minutes {args.max_minutes:g} reached: run again with --resume", flush=True)
                    return
                seed_everything(seed)
                backbone = create_backbone(name, data.spatial_dims, data.in_channels, width=width,
                                           img_size=data.size)
                rows.append({"dataset": data.name, "backbone": name, "width": width, "method": "random-init",
                             "seed": seed, **score(backbone, data)})
                write(out, meta, rows)
        skipped: set[str] = set()
        for seed in args.seeds:  # seed-major: every method's first seed before any second seed
            for entry in methods:
                name, width = encoder_for(resolve_entry(entry)[0], data.spatial_dims)
                if (data.name, entry, name, seed) in done or entry in skipped:
                    continue
                if out_of_time():
                    print(f"--max-minutes {args.max_minutes:g} reached: run again with --resume", flush=True)
                    return
                info = {"dataset": data.name, "backbone": name, "width": width, "method": entry, "seed": seed}
                try:
                    backbone, stats = pretrain(entry, data, args.budget_seconds, args.batch_size, seed,
                                               precision, select=args.select_on == "val_knn")
                except MedsslError as err:  # e.g. Rubik's cube is 3D only
                    print(f"skipped {entry} on {data.name}: {err}", flush=True)
                    skipped.add(entry)
                    continue
                rows.append({**info, **stats, **score(backbone, data)})
                write(out, meta, rows)
                print(json.dumps(rows[-1]), flush=True)
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
