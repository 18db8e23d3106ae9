"""Scale: pretraining from the lazy, cached source on pools of 1x, 4x and 16x a base size.

    python benchmarks/scale.py [--side 96] [--out benchmarks/results/scale.json]

Base pool: the 260 MSD Hippocampus volumes (NIfTI), resized to ``--side``^3 uint8 through the cache
(``medssl.data.pool.folder_pool``). A k-x pool holds k augmented copies of every volume (axis flips
and permutations: 48 distinct variants), written once through ``cached_stack(storage="disk")``.
Each pool size runs in a fresh process (so peak RSS is its own): build the cache, then 2 epochs of
SimCLR (ResNet-10 x0.25, 32^3 views cropped from the volumes, bf16 where supported, batch 32),
``TensorBatches`` reading the memory map and releasing its pages after every batch. Reported per
pool: cache build seconds, seconds per epoch and volumes/s (fit's average over both epochs), peak
RSS of the process, and the decoded pool size. The 1x pool also runs from memory
(``storage="memory"``) for the lazy-vs-memory throughput ratio.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = [(flips, perm) for perm in itertools.permutations((0, 1, 2))
            for flips in itertools.product((False, True), repeat=3)]  # 48


def variant(base, copies: int, i: int):
    """Item i of a k-copies pool: volume i % n under variant i // n (flips, axis permutation)."""
    import numpy as np

    n = len(base)
    flips, perm = VARIANTS[(i // n) % len(VARIANTS)]
    v = base[i % n].numpy()[0]
    v = np.transpose(v, perm)
    for axis, f in enumerate(flips):
        if f:
            v = np.flip(v, axis)
    return np.ascontiguousarray(v)[None]


def one(copies: int, side: int, storage: str, cache: Path, data: Path) -> dict:
    """Build the k-x pool and pretrain 2 epochs on it, in this process."""
    import torch

    from medssl.config import load_config
    from medssl.data.cache import cache_key, cached_stack
    from medssl.data.pool import folder_pool
    from medssl.data.types import PretrainData
    from medssl.studies.pretraining import pretrain

    os.environ["MEDSSL_CACHE_DIR"] = str(cache)
    torch.set_num_threads(2)
    folder = data / "msd_task04_hippocampus" / "TrainingSet" / "images"
    base = folder_pool(folder, side, storage="disk", workers=2).images
    t0 = time.perf_counter()
    key = cache_key([], kind="scale", side=side, copies=copies, base=len(base))
    images = cached_stack(key, len(base) * copies, (1, side, side, side), partial(variant, base, copies),
                          storage=storage, workers=2)
    built = time.perf_counter() - t0
    cfg = load_config(ROOT / "configs" / "demo.yaml", [
        "model.backbone=resnet10", "model.width=0.25", "pretrain.epochs=2", "pretrain.batch_size=32",
        "pretrain.method_args={proj_hidden_dim: 128, proj_dim: 64}", "engine.log_every=1000",
        "seed=0"])
    with tempfile.TemporaryDirectory() as tmp:
        stats = pretrain(cfg, PretrainData(images, 3, 1, 32), Path(tmp))
    steps = len(images) // 32
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # MiB
    return {"copies": copies, "storage": storage, "volumes": len(images), "side": side,
            "decoded_mib": round(len(images) * side**3 / 2**20, 1), "cache_build_s": round(built, 1),
            "steps_per_epoch": steps, "seconds_per_epoch": round(stats["seconds"] / 2, 1),
            "volumes_per_s": round(stats["img_per_s"], 1), "peak_rss_mib": round(rss, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=96)
    parser.add_argument("--copies", default="1,4,16")
    parser.add_argument("--out", default="benchmarks/results/scale.json")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: "copies,storage,cache"
    args = parser.parse_args()
    data = Path(os.environ.get("MEDSSL_DATA_DIR") or ROOT.parent / "shared" / "data")
    if args.one:
        copies, storage, cache = args.one.split(",")
        print(json.dumps(one(int(copies), args.side, storage, Path(cache), data)))
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="medssl-scale-") as cache:
        for copies, storage in [(1, "memory")] + [(int(c), "disk") for c in args.copies.split(",")]:
            t0 = time.perf_counter()
            done = subprocess.run([sys.executable, __file__, "--side", str(args.side), "--one",
                                   f"{copies},{storage},{cache}"], capture_output=True, text=True, check=True)
            row = json.loads(done.stdout.strip().splitlines()[-1])
            row["wall_s"] = round(time.perf_counter() - t0, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "side": args.side,
            "model": "SimCLR, ResNet-10 x0.25, 32^3 views, batch 32, 2 epochs",
            "note": "seconds per epoch = fit's wall time / 2 epochs, volumes/s = fit's average; "
                    "peak RSS of the training process (ru_maxrss); disk caches are memory maps whose "
                    "pages are released after every batch"}
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
