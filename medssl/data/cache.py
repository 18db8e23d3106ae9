"""Preprocessed items in one uint8 array: in memory, or memory-mapped from a persistent disk cache.

Reading NIfTI/DICOM/PNG files means decoding, normalising, resampling and padding every item; done
once, the result is a uint8 ``[N, C, *S]`` array that later epochs (and later runs) index directly.
:func:`cached_stack` builds that array with the items read in ``DataLoader`` worker processes and

- ``storage="memory"``: keeps it in RAM (small data; the default where it fits);
- ``storage="disk"``: writes it to ``<cache>/<key>.npy`` (atomically: ``.part`` then rename) and
  returns a copy-on-write memory map of it, so the operating system pages in only the batches being
  read and data larger than RAM trains at page-cache/disk speed. The key hashes the file list (paths,
  sizes, modification times) and the preprocessing, so a changed input or setting builds a new file;
- ``storage="auto"``: disk when the array would take more than half of the available memory.

Why a ``.npy`` memory map and not MONAI's ``PersistentDataset``: the items here are already fixed-shape
uint8 arrays and batches are gathered by index, so one memory-mapped array needs no per-item file,
no pickling (``PersistentDataset`` stores each item with ``torch.save``) and reads a batch with one
fancy index; ``benchmarks/results/lazy_cache.md`` measures both.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from medssl.errors import MedsslError

STORAGES = ("auto", "memory", "disk")
CACHE_ENV = "MEDSSL_CACHE_DIR"
_MAPS: list[np.memmap] = []  # the open disk caches, for :func:`release`


def cache_root() -> Path:
    """``$MEDSSL_CACHE_DIR``, else ``$XDG_CACHE_HOME/medssl/pools`` (default ``~/.cache``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "medssl" / "pools"


def cache_key(files: Sequence[Path], **params: object) -> str:
    """A name for the preprocessed array of ``files`` under ``params`` (changes when either does)."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    for f in files:
        st = os.stat(f)
        digest.update(f"{Path(f).resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def available_memory() -> int:
    """Bytes of memory available now (Linux ``MemAvailable``; else physical memory)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def choose_storage(storage: str, nbytes: int) -> str:
    """``auto`` -> ``disk`` above half the available memory, else ``memory``."""
    if storage not in STORAGES:
        raise MedsslError(f"data.storage must be auto, memory or disk, got '{storage}'")
    if storage != "auto":
        return storage
    return "disk" if nbytes > available_memory() // 2 else "memory"


class _Items(Dataset):
    def __init__(self, read: Callable[[int], np.ndarray], n: int) -> None:
        self.read, self.n = read, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[int, np.ndarray]:
        return i, self.read(i)


def _fill(out: np.ndarray, read: Callable[[int], np.ndarray], workers: int) -> None:
    """``out[i] = read(i)`` for every i, reading in ``workers`` processes (0: this one)."""
    loader = DataLoader(_Items(read, len(out)), batch_size=None, num_workers=workers,
                        collate_fn=lambda item: item)
    every = max(1, (64 << 20) // max(1, out[0].nbytes))  # items per 64 MiB
    for i, item in loader:
        item = np.asarray(item)
        if item.shape != out.shape[1:] or item.dtype != np.uint8:
            raise MedsslError(f"item {i}: preprocessed to {item.dtype} {item.shape}, expected uint8 "
                              f"{out.shape[1:]}")
        out[i] = item
        if (i + 1) % every == 0:
            drop_pages(out)


def cached_stack(key: str, n: int, item_shape: Sequence[int], read: Callable[[int], np.ndarray], *,
                 storage: str = "auto", workers: int = 2, root: Path | None = None) -> torch.Tensor:
    """uint8 ``[n, *item_shape]`` with row ``i = read(i)`` (a uint8 array of ``item_shape``), the
    items read in ``workers`` DataLoader processes (see :func:`cached_array`)."""
    shape = (n, *(int(s) for s in item_shape))
    return cached_array(key, shape, lambda out: _fill(out, read, workers), storage=storage, root=root)


def cached_array(key: str, shape: Sequence[int], fill: Callable[[np.ndarray], None], *,
                 storage: str = "auto", root: Path | None = None) -> torch.Tensor:
    """A uint8 array of ``shape`` that ``fill(out)`` writes. ``memory``: in RAM. ``disk``:
    ``<root>/<key>.npy`` is built once and memory-mapped (copy-on-write: the file never changes);
    a finished file is reused as is."""
    shape = tuple(int(s) for s in shape)
    if choose_storage(storage, int(np.prod(shape))) == "memory":
        out = np.empty(shape, np.uint8)
        fill(out)
        return torch.from_numpy(out)
    root = cache_root() if root is None else Path(root)
    path = root / f"{key}.npy"
    if not path.is_file():
        root.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f"{path.name}.{os.getpid()}.part")
        try:
            out = np.lib.format.open_memmap(part, mode="w+", dtype=np.uint8, shape=shape)
            fill(out)
            out.flush()
            del out
            os.replace(part, path)
        finally:
            part.unlink(missing_ok=True)
    arr = np.load(path, mmap_mode="c")
    if arr.shape != shape or arr.dtype != np.uint8:
        raise MedsslError(f"{path}: cached array is {arr.dtype} {arr.shape}, expected uint8 {shape}; "
                          "delete it to rebuild")
    _MAPS.append(arr)
    return torch.from_numpy(arr)


def drop_pages(out: np.ndarray) -> None:
    """While a disk cache is written: flush what was written and drop it from the resident set (the
    page cache keeps it), so building a file larger than RAM keeps memory flat."""
    if isinstance(out, np.memmap) and hasattr(mmap, "MADV_DONTNEED"):
        out.flush()
        out._mmap.madvise(mmap.MADV_DONTNEED)


def is_mapped(t: torch.Tensor) -> bool:
    """Whether ``t`` lies in a disk cache's memory map."""
    return _map_of(t) is not None


def release(t: torch.Tensor) -> None:
    """Give back the resident pages of the memory map ``t`` lies in (``MADV_DONTNEED``): read pages
    count in the process's resident set until released, so a training loop that releases after each
    batch keeps its memory flat however large the file (the page cache still holds them)."""
    m = _map_of(t)
    if m is not None and hasattr(mmap, "MADV_DONTNEED"):
        m._mmap.madvise(mmap.MADV_DONTNEED)  # numpy keeps the mmap object there


def _map_of(t: torch.Tensor) -> np.memmap | None:
    if t.device.type != "cpu" or not _MAPS:
        return None
    ptr = t.data_ptr()
    for m in _MAPS:
        start = m.ctypes.data
        if start <= ptr < start + m.nbytes:
            return m
    return None
