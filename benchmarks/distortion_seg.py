"""Distortion-localisation pretraining (Felfeliyan et al., CMIG 2023) vs scratch vs Models Genesis
for segmentation with few labels, on MSD Task04 Hippocampus (3D, and 2D slices for the Mask R-CNN)
and ISBI 2012 EM. Not a unit test.

Each entry is one real segmentation study (``configs/distortion/*.yaml``) with one init: every
pretext gets the same pretraining wall-clock budget (``pretrain.max_seconds``) and the same
fine-tuning schedule; seeds 0-2 at each label fraction, one held-out fold. Finished entries are
reused, so the benchmark can run in pieces::

    python benchmarks/distortion_seg.py --datasets isbi2012          # ~20 min on 2 cores
    python benchmarks/distortion_seg.py --datasets hippocampus_3d,hippocampus_2d
    python benchmarks/distortion_seg.py --datasets hippocampus_2d_instance   # after hippocampus_2d
    python benchmarks/distortion_seg.py --datasets hippocampus_3d --pretrain-seed 1   # another pretraining
    python benchmarks/distortion_seg.py --datasets hippocampus_3d --resume   # continue a killed entry
    python benchmarks/distortion_seg.py --rebuild    # .md and provenance notes from the .json only

Writes ``benchmarks/results/distortion_seg.{json,md}``: Dice mean ± 95% CI (t over seeds) per
dataset, fraction and init, the relative SSL-over-scratch gain (the paper reports ~+20% Dice on
knee MRI at low label fractions), the SSL − scratch difference with a 95% t-interval paired by
fine-tuning seed (both arms fine-tune on the same labelled cases) and wall times. ``--pretrain-seed K``
runs the SSL entries again with ``pretrain.seed=K`` (same splits and labelled subsets) into
``<dataset>_<init>_pK``: each pretraining is its own row, so the rows of one pretext show
pretraining-to-pretraining variation, and a table under each dataset pools a pretext's pretrainings
(mean over pretrainings x fine-tuning seeds, interval over both: ``crossed_interval``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from medssl.config import StudyConfig, load_config
from medssl.report.report import read_results
from medssl.report.segmentation import validation_lines
from medssl.stats.intervals import crossed_interval, paired_seed_diffs
from medssl.studies import run_study
from medssl.studies.pretraining import pretrain_seed as seed_of

GENESIS = ["pretrain.method=genesis", "pretrain.method_args={}"]
DENSE_2D = ["pretrain.method=distortion_dense", "segmentation.load_decoder=true"]
INSTANCE = ["segmentation.network=maskrcnn", "finetune.fractions=[0.01]", "finetune.batch_size=8",
            "finetune.min_steps=100", "segmentation.val_checks=1"]  # CPU: ~2 min a run
DICE_RULE = "false positive on a case without the class = Dice 0; neither = left out (6a66d92)"
# what medssl.report.segmentation.validation_lines needs of a run
CURVE_KEYS = ("protocol", "fraction", "fold", "seed", "steps", "steps_per_epoch", "best_epoch", "val_curve")
OLD_DICE_RULE = ("Scored before 6a66d92: a structure predicted in a case whose ground truth lacks it "
                 "was left out of that case's Dice (NaN) instead of scoring 0. Only cases lacking a class "
                 "are affected (e.g. hippocampus_2d slices); there the Dice means are optimistic.")
# dataset -> (config, {init name: overrides}); "scratch" trains from random init only.
ENTRIES = {
    "isbi2012": ("configs/distortion/isbi2012_dense.yaml", {
        "scratch": ["finetune.inits=[scratch]"],
        "distortion_dense": [],
        "distortion_maskrcnn": ["pretrain.method=distortion_maskrcnn", "segmentation.load_decoder=false"],
        "genesis": GENESIS,
    }),
    "hippocampus_3d": ("configs/distortion/hippocampus_dense.yaml", {
        "scratch": ["finetune.inits=[scratch]"],
        "distortion_dense": [],
        "genesis": GENESIS,
    }),
    "hippocampus_2d": ("configs/distortion/hippocampus_maskrcnn.yaml", {
        "scratch": ["finetune.inits=[scratch]"],
        "distortion_maskrcnn": [],
        "distortion_dense": DENSE_2D,
    }),
    # fine-tuning (b): the whole detector, reusing hippocampus_2d's Mask R-CNN pretraining
    "hippocampus_2d_instance": ("configs/distortion/hippocampus_maskrcnn.yaml", {
        "scratch": [*INSTANCE, "finetune.inits=[scratch]"],
        "distortion_maskrcnn": [*INSTANCE, "pretrain.checkpoint={runs}/hippocampus_2d_distortion_maskrcnn{p}/"
                                "pretrain/checkpoint.safetensors"],
    }),
}


def entry_name(init: str, pretrain_seed: int | None = None) -> str:
    """``init``, or ``<init>_p<K>`` for the entry pretrained with ``pretrain.seed=K``."""
    return init if pretrain_seed is None else f"{init}_p{pretrain_seed}"


def split_name(name: str) -> tuple[str, int | None]:
    """:func:`entry_name` backwards: ``genesis_p1`` -> ``("genesis", 1)``."""
    init, _, seed = name.rpartition("_p")
    return (init, int(seed)) if init and seed.isdigit() else (name, None)


def entry_order(name: str) -> tuple[str, int]:
    """Sort key: by init, then its own pretraining before ``_p1``, ``_p2``, ..., ``_p10``."""
    init, pretrain_seed = split_name(name)
    return init, -1 if pretrain_seed is None else pretrain_seed


def entry_config(dataset: str, init: str, out: Path, extra: list[str] = (),
                 pretrain_seed: int | None = None) -> StudyConfig:
    """The resolved study config of one entry (``pretrain_seed``: another pretraining of it)."""
    config, variants = ENTRIES[dataset]
    suffix = entry_name("", pretrain_seed)  # "" or "_pK": the pretraining an instance entry reuses
    entry = [v.replace("{runs}", str(out)).replace("{p}", suffix) for v in variants[init]]
    sets = [f"name={dataset}_{entry_name(init, pretrain_seed)}", f"output_dir={out}", *entry, *extra]
    if init != "scratch":
        sets.append("finetune.inits=[ssl]")
    if pretrain_seed is not None:
        sets.append(f"pretrain.seed={pretrain_seed}")
    return load_config(config, sets)


def run_entry(dataset: str, init: str, out: Path, extra: list[str], pretrain_seed: int | None = None,
              resume: bool = False) -> Path:
    """Run (or reuse) one study; returns its run directory. ``resume`` continues a killed one
    (``<run>.incomplete``: finished cells and the pretraining are kept) instead of starting again."""
    run = out / f"{dataset}_{entry_name(init, pretrain_seed)}"
    if (run / "results.jsonl").exists():
        print(f"reusing {run}")
        return run
    cfg = entry_config(dataset, init, out, extra, pretrain_seed)
    if resume and run.with_name(run.name + ".incomplete").is_dir():
        return run_study(cfg, resume=True)
    return run_study(cfg, overwrite=True)


def provenance(row: dict, out: Path, extra: list[str] = ()) -> dict:
    """Pretraining facts of a summary row, from its entry's config: ``pretrain_pool`` (None for
    scratch), ``pretrain_seed``, ``pretrainings`` (a segmentation study pretrains once, with the
    pretraining seed, for all its fine-tuning seeds and fractions) and ``pretrain_reused`` (checkpoint)."""
    if row["init"] == "scratch":
        return {"pretrain_pool": None, "pretrain_seed": None, "pretrainings": 0, "pretrain_reused": None}
    init, pretrain_seed = split_name(row["init"])
    cfg = entry_config(row["dataset"], init, out, extra, pretrain_seed)
    return {"pretrain_pool": cfg.segmentation.pretrain_pool, "pretrain_seed": seed_of(cfg), "pretrainings": 1,
            "pretrain_reused": cfg.pretrain.checkpoint}


def notes(table: list[dict], meta: dict) -> list[str]:
    """What the numbers cover: pretraining pools, intervals (from the rows' provenance) and the
    Dice rule for a class missing from a case (``meta.dice_rule``, absent in older files)."""
    ssl = [r for r in table if r["init"] != "scratch"]
    seeds = sorted({r["seeds"] for r in table})
    lines = []
    seen = sorted({r["dataset"] for r in ssl if r["pretrain_pool"] == "all"})
    if seen:
        lines.append(f"Pretraining saw the test fold's images ({', '.join(seen)}): "
                     "`segmentation.pretrain_pool: all` pretrains on the images (never the labels) of every "
                     "case, including the held-out test fold. This is transductive and favours SSL over "
                     "scratch.")
    kept_out = sorted({r["dataset"] for r in ssl if r["pretrain_pool"] != "all"})
    if kept_out:
        lines.append(f"Test-fold images left out of pretraining: {', '.join(kept_out)}.")
    for dataset, init, path in sorted({(r["dataset"], r["init"], r["pretrain_reused"])
                                       for r in ssl if r["pretrain_reused"]}):
        lines.append(f"{dataset} {init} reuses the pretraining of {Path(path).parent.parent.name} "
                     "(its checkpoint, not a new pretraining).")
    counts = sorted({r["pretrainings"] for r in ssl})
    if not ssl:
        return [*lines, f"Intervals cover fine-tuning seeds ({'/'.join(map(str, seeds))} per row); no "
                "pretrained entry yet."] + ([] if meta.get("dice_rule") else [OLD_DICE_RULE])
    lines.append(f"Intervals cover fine-tuning seeds only ({'/'.join(map(str, seeds))} per row): each SSL "
                 f"entry has {'one' if counts == [1] else '/'.join(map(str, counts))} pretraining (seed "
                 f"{'/'.join(map(str, sorted({r['pretrain_seed'] for r in ssl})))}), shared by all its "
                 "fine-tuning seeds and fractions, so pretraining-to-pretraining variation is not in them.")
    if any(split_name(r["init"])[1] is not None for r in ssl):
        lines.append("Rows `<init>_pK` are the same pretext pretrained again with `pretrain.seed=K` (same "
                     "splits and labelled subsets): the spread between a pretext's rows is its "
                     "pretraining-to-pretraining variation; the table under a dataset's rows pools a "
                     "pretext's pretrainings, with an interval over pretraining and fine-tuning seeds.")
    return lines + ([] if meta.get("dice_rule") else [OLD_DICE_RULE])


def ci95(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% t-interval); half-width NaN for one value. Not
    ``medssl.stats.intervals.t_interval``: that one refuses NaN, and a per-class Dice is NaN when a
    class is missing from a run's test cases; here it gives a NaN cell instead."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float(v.mean()), float("nan")
    return float(v.mean()), float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


def entries(out: Path, dataset: str) -> list[str]:
    """The finished entries of ``dataset`` under ``out`` in ENTRIES order, each init's other
    pretrainings (``<init>_pK``, by K) after it."""
    names = []
    for init in ENTRIES[dataset][1]:
        found = [split_name(p.parent.name.removeprefix(f"{dataset}_"))
                 for p in out.glob(f"{dataset}_{init}*/results.jsonl")]
        names += sorted((entry_name(*e) for e in found if e[0] == init), key=entry_order)
    return names


def summarise(out: Path) -> list[dict]:
    """One row per dataset x entry x fraction from every finished entry under ``out``."""
    table = []
    for dataset in ENTRIES:
        for init in entries(out, dataset):
            path = out / f"{dataset}_{init}" / "results.jsonl"
            rows = read_results(path)
            seg = [r for r in rows if r["protocol"] == "segmentation"]
            pre = next((r for r in rows if r["protocol"] == "pretrain"), {})
            classes = seg[0]["classes"]
            for fraction in sorted({r["fraction"] for r in seg}):
                runs = [r for r in seg if r["fraction"] == fraction]
                row = {"dataset": dataset, "init": init, "fraction": fraction, "seeds": len(runs),
                       "n_labelled": sorted({r["n_labelled"] for r in runs}),
                       "n_groups": sorted({r.get("n_labelled_groups", 0) for r in runs}),
                       "pretrain_seconds": pre.get("seconds"), "pretrain_steps": pre.get("steps"),
                       "finetune_seconds": float(np.mean([r["seconds"] for r in runs])),
                       "dice_values": [r["dice_mean"] for r in runs],
                       "dice_by_seed": {str(r["seed"]): r["dice_mean"] for r in runs},
                       "val_curves": [{**{k: r.get(k) for k in CURVE_KEYS}, "init": init} for r in runs]}
                row["dice"] = ci95(row["dice_values"])
                for c in classes:
                    row[f"dice_{c}"] = ci95([r[f"dice_{c}"] for r in runs])
                row["classes"] = classes
                table.append(row)
    return table


def paired(row: dict, scratch: dict | None) -> str:
    """``+0.012 [-0.010, +0.034] (3)``: SSL − scratch Dice over the fine-tuning seeds both rows have
    (paired); empty with fewer than two (or no per-seed values: files before ``dice_by_seed``)."""
    ssl, ref = row.get("dice_by_seed", {}), (scratch or {}).get("dice_by_seed", {})
    shared = sorted(set(ssl) & set(ref))
    if len(shared) < 2:
        return ""
    mean, (lo, hi), n = paired_seed_diffs({k: ssl[k] for k in shared}, {k: ref[k] for k in shared})
    return f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}] ({n})"


def pooled(table: list[dict]) -> list[dict]:
    """One row per dataset x fraction x pretext with >= 2 pretrainings (``<init>``, ``<init>_pK``):
    the SSL − scratch differences of every pretraining x fine-tuning seed both arms share, their
    grand mean and its interval over both (:func:`crossed_interval`: a fine-tuning seed is one
    labelled subset and one scratch run, shared by every pretraining)."""
    out = []
    for dataset, fraction in dict.fromkeys((r["dataset"], r["fraction"]) for r in table):
        sub = [r for r in table if (r["dataset"], r["fraction"]) == (dataset, fraction)]
        ref = next((r.get("dice_by_seed", {}) for r in sub if r["init"] == "scratch"), {})
        for init in dict.fromkeys(split_name(r["init"])[0] for r in sub if r["init"] != "scratch"):
            arms = [r for r in sub if split_name(r["init"])[0] == init]  # summarise's order: p0, p1, ...
            seeds = sorted(set(ref).intersection(*(r.get("dice_by_seed", {}) for r in arms)), key=int)
            if len(arms) < 2 or len(seeds) < 2:
                continue
            diffs = [[r["dice_by_seed"][k] - ref[k] for k in seeds] for r in arms]
            mean, (lo, hi), df = crossed_interval(diffs)
            out.append({"dataset": dataset, "fraction": fraction, "init": init,
                        "pretrainings": [r["init"] for r in arms], "seeds": seeds, "diffs": diffs,
                        "mean": mean, "ci95": [lo, hi], "df": df if math.isfinite(df) else None})
    return out


def pooled_lines(rows: list[dict]) -> list[str]:
    """The markdown table of :func:`pooled` rows of one dataset (empty without any)."""
    if not rows:
        return []
    lines = ["SSL − scratch over pretrainings: mean of the paired differences of every pretraining x "
             "fine-tuning seed, 95% interval from a two-way random-effects ANOVA (pretraining and "
             "fine-tuning seed crossed, Satterthwaite df): covers pretraining seeds and fine-tuning "
             "seeds (labelled subsets), not the finite test set.", "",
             "| fraction | pretext | pretrainings | SSL − scratch per pretraining | SSL − scratch [95%] "
             "(pretrainings x seeds, df) |", "|---|---|---|---|---|"]
    for r in rows:
        each = ", ".join(f"{float(np.mean(d)):+.3f}" for d in r["diffs"])
        lines.append(f"| {r['fraction']:g} | {r['init']} | {', '.join(r['pretrainings'])} | {each} | "
                     f"{r['mean']:+.3f} [{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}] "
                     f"({len(r['diffs'])} x {len(r['seeds'])}, {r['df'] or math.inf:.1f}) |")
    return [*lines, ""]


def markdown(table: list[dict], meta: dict, pools: list[dict]) -> str:
    lines = ["# Distortion-localisation pretraining for segmentation (Self-supervised Mask R-CNN and dense)",
             "", f"{meta['date']}, {meta['cpus']} CPU cores, torch {meta['torch']}. One held-out fold "
             "(fold 0 of 5, per volume/slice group), seeds 0-2 per fraction; every pretext had the same "
             "pretraining wall-clock budget; fine-tuning identical for every init. Dice: mean ± 95% CI "
             "(t-interval over the 3 seeds). Gain: (SSL - scratch) / scratch Dice. SSL − scratch: mean "
             "Dice difference and the 95% t-interval of the per-seed differences, paired by fine-tuning seed "
             "(both arms fine-tune on the same labelled cases).", "",
             *[f"- {n}" for n in meta.get("notes", [])], ""]
    for dataset in dict.fromkeys(r["dataset"] for r in table):
        sub = [r for r in table if r["dataset"] == dataset]
        classes = sub[0]["classes"]
        scratch = {r["fraction"]: r for r in sub if r["init"] == "scratch"}
        lines += [f"## {dataset}", "",
                  "| fraction | labelled (groups) | init | Dice | " + " | ".join(f"Dice {c}" for c in classes)
                  + " | gain vs scratch | SSL − scratch [95% paired t] (pairs) | pretrain s (steps) "
                  "| fine-tune s/run |",
                  "|---|---|---|---|" + "---|" * len(classes) + "---|---|---|---|"]
        for r in sorted(sub, key=lambda r: (r["fraction"], r["init"] != "scratch", *entry_order(r["init"]))):
            fmt = lambda m: f"{m[0]:.3f} ± {m[1]:.3f}"  # noqa: E731
            ref = scratch.get(r["fraction"]) if r["init"] != "scratch" else None
            base = ref["dice"][0] if ref else None
            gain = f"{100 * (r['dice'][0] - base) / base:+.1f}%" if base else ""
            pre = ("" if r["pretrain_seconds"] is None
                   else f"{r['pretrain_seconds']:.0f} ({r['pretrain_steps']})")
            lines.append(f"| {r['fraction']:g} | {'/'.join(map(str, r['n_labelled']))} "
                         f"({'/'.join(map(str, r['n_groups']))}) | {r['init']} | {fmt(r['dice'])} | "
                         + " | ".join(fmt(r[f"dice_{c}"]) for c in classes)
                         + f" | {gain} | {paired(r, ref)} | {pre} | {r['finetune_seconds']:.0f} |")
        lines.append("")
        lines += pooled_lines([r for r in pools if r["dataset"] == dataset])
        if validation := validation_lines([c for r in sub for c in r.get("val_curves", [])]):
            lines += [*validation, ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(ENTRIES))
    parser.add_argument("--inits", default=None, help="subset of inits (default: all of each dataset)")
    parser.add_argument("--out-runs", default="runs/bench_distortion")
    parser.add_argument("--out", default="benchmarks/results/distortion_seg.json")
    parser.add_argument("--set", action="append", default=[], help="extra config override for every entry")
    parser.add_argument("--pretrain-seed", type=int, default=None,
                        help="run the SSL entries again with pretrain.seed=K (into <dataset>_<init>_pK)")
    parser.add_argument("--resume", action="store_true",
                        help="continue killed entries (<entry>.incomplete) instead of starting them again")
    parser.add_argument("--rebuild", action="store_true",
                        help="no runs: add provenance and notes to --out and rewrite its .md")
    args = parser.parse_args()
    runs, out = Path(args.out_runs), Path(args.out)
    if args.rebuild:
        saved = json.loads(out.read_text())
        write(out, saved["meta"], saved["rows"], runs, args.set)
        return
    if args.pretrain_seed is not None:  # another pretraining, never the one every entry already has
        for dataset in args.datasets.split(","):
            base = seed_of(entry_config(dataset, "scratch", runs, args.set))
            if args.pretrain_seed == base:
                parser.error(f"--pretrain-seed {base} is {dataset}'s own pretraining seed (its entries "
                             "without _pK); choose another")
    t0 = time.perf_counter()
    for dataset in args.datasets.split(","):
        for init in ENTRIES[dataset][1]:
            if args.inits and init not in args.inits.split(","):
                continue
            if args.pretrain_seed is not None and init == "scratch":
                print(f"{dataset} scratch: does not pretrain, nothing to run for --pretrain-seed")
                continue
            t = time.perf_counter()
            run_entry(dataset, init, runs, args.set, args.pretrain_seed, args.resume)
            print(f"{dataset} {entry_name(init, args.pretrain_seed)}: {time.perf_counter() - t:.0f} s",
                  flush=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "torch": torch.__version__,
            "machine": platform.machine(), "this_invocation_seconds": time.perf_counter() - t0,
            "dice_rule": DICE_RULE}
    write(out, meta, summarise(runs), runs, args.set)


def write(out: Path, meta: dict, table: list[dict], runs: Path, extra: list[str]) -> None:
    """Rows with their pretraining provenance, meta with the notes: ``out`` (.json) and its .md."""
    table = [{**r, **provenance(r, runs, extra)} for r in table]
    meta = {**meta, "notes": notes(table, meta)}
    out.parent.mkdir(parents=True, exist_ok=True)
    pools = pooled(table)
    out.write_text(json.dumps({"meta": meta, "rows": table, "pooled": pools}, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(table, meta, pools) + "\n")
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
