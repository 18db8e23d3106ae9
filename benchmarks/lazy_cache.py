"""Lazy data: which on-disk cache for items that do not fit in memory? A measurement.

    python benchmarks/lazy_cache.py [--out benchmarks/results/lazy_cache.json] [--repeats 3]

Three ways to feed an epoch of preprocessed uint8 items from files, same preprocessing
(``medssl.data.pool.read_item``: decode, normalise, resize/pad), same 2 DataLoader workers, batches
of 32 in a seeded random order, on the shared data:

- ``decode``: decode every file every epoch (no cache; a plain ``Dataset`` over the files);
- ``monai_persistent``: MONAI's ``PersistentDataset`` (one ``torch.save`` file per item, loaded
  with ``torch.load`` in the workers), the library the issue names;
- ``memmap``: medssl's ``cached_stack(storage="disk")`` (one ``.npy`` memory map; batches gathered
  by index in the workers, ``TensorBatches(workers=2)``; ``memmap_in_process``: gathered in the
  training process, ``workers=0``, the default).

For each: first epoch (the build, for the caches) and later epochs (items/s; min/median/max over
``--repeats``), bytes on disk. The page cache is warm after the first epoch (no root to drop it):
later epochs measure the read path, not the disk. Datasets (``CASES``): MSD Hippocampus (260 NIfTI
volumes resized to 32^3), the TCIA CT slices (100 DICOM, 64 px), the PBC blood-cell JPEGs (2,000,
read grey, 64 px).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from medssl.data.cache import cache_key, cached_stack
from medssl.data.folder import list_files
from medssl.data.loaders import TensorBatches
from medssl.data.pool import POOL_SUFFIXES, read_item

ROOT = Path(os.environ.get("MEDSSL_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")
CASES = {  # name: (folder, size per side)
    "hippocampus_nifti_3d": (ROOT / "msd_task04_hippocampus" / "TrainingSet" / "images", 32),
    "tcia_ct_dicom_2d": (ROOT / "tcia_ct_contrast_dicom" / "dicom", 64),
    "pbc_blood_jpeg_2d": (ROOT / "pbc_blood_cells_subset" / "images", 64),
}
BATCH, WORKERS = 32, 2


class Files(Dataset):
    def __init__(self, files: list[Path], size: int) -> None:
        self.files, self.size = files, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(read_item(self.files[i], self.size, ()))


def _epoch(loader) -> tuple[float, int]:
    t0, n = time.perf_counter(), 0
    for x in loader:
        x = x["image"] if isinstance(x, dict) else x
        n += len(x)
    return time.perf_counter() - t0, n


def _loader(ds: Dataset, seed: int) -> DataLoader:
    return DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=WORKERS,
                      generator=torch.Generator().manual_seed(seed))


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def measure(name: str, folder: Path, size: int, repeats: int, tmp: Path) -> list[dict]:
    files = list_files(folder, POOL_SUFFIXES, recursive=True)
    rows = []

    def record(way: str, first: tuple[float, int], later: list[float], n: int, disk: int) -> None:
        rates = [n / s for s in later]
        rows.append({"dataset": name, "way": way, "items": n, "size": size,
                     "first_epoch_s": round(first[0], 2), "first_items_per_s": round(first[1] / first[0], 1),
                     "items_per_s_min": round(min(rates), 1),
                     "items_per_s_median": round(statistics.median(rates), 1),
                     "items_per_s_max": round(max(rates), 1), "disk_bytes": disk})
        print(json.dumps(rows[-1]), flush=True)

    ds = Files(files, size)
    first = _epoch(_loader(ds, 0))
    record("decode", first, [_epoch(_loader(ds, r + 1))[0] for r in range(repeats)], len(files), 0)

    from monai.data import PersistentDataset
    from monai.transforms import Lambda

    cache = tmp / f"monai_{name}"
    pds = PersistentDataset([str(f) for f in files], transform=Lambda(partial(_monai_read, size)),
                            cache_dir=cache)
    first = _epoch(_loader(pds, 0))
    record("monai_persistent", first, [_epoch(_loader(pds, r + 1))[0] for r in range(repeats)], len(files),
           _size(cache))

    os.environ["MEDSSL_CACHE_DIR"] = str(tmp / f"memmap_{name}")
    shape = (1, *[size] * (3 if "3d" in name else 2))
    t0 = time.perf_counter()
    x = cached_stack(cache_key(files, size=size), len(files), shape, partial(_read, files, size),
                     storage="disk", workers=WORKERS)
    built = time.perf_counter() - t0
    for way, workers in (("memmap", WORKERS), ("memmap_in_process", 0)):
        batches = TensorBatches(x, None, BATCH, seed=0, drop_last=False, workers=workers)
        later = [_epoch(batches.epoch(r + 1))[0] for r in range(repeats)]
        record(way, (built, len(files)), later, len(files), _size(tmp / f"memmap_{name}"))
    return rows


def _monai_read(size: int, path: str) -> torch.Tensor:
    return torch.from_numpy(read_item(Path(path), size, ()))


def _read(files: list[Path], size: int, i: int) -> np.ndarray:
    return read_item(files[i], size, ())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/lazy_cache.json")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", default=",".join(CASES))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="medssl-lazy-"))
    try:
        for name in args.cases.split(","):
            folder, size = CASES[name]
            rows += measure(name, folder, size, args.repeats, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    meta = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "torch": torch.__version__, "batch": BATCH, "workers": WORKERS, "repeats": args.repeats,
            "note": "warm page cache after the first epoch; items/s over later epochs (min/median/max)"}
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
