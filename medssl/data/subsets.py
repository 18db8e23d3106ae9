"""Seeded, class-stratified label-fraction subsets (for label-efficient fine-tuning)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from medssl.errors import MedsslError
from medssl.io import atomic_write


def _as_numpy(labels: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.size == 0 or arr.ndim not in (1, 2):
        raise MedsslError(f"labels must be a non-empty [N] or [N, L] array, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise MedsslError(f"labels must be integers, got dtype {arr.dtype}")
    return arr


def _count(fraction: float, n: int) -> int:
    """round(fraction * n), halves rounded up, and at least 1."""
    return max(1, math.floor(fraction * n + 0.5))


def label_fraction_indices(
    labels: torch.Tensor | np.ndarray, fraction: float, seed: int
) -> np.ndarray:
    """Pick a seeded, class-stratified subset of sample indices.

    For 1D class labels each class ``c`` with ``n_c`` samples contributes
    ``max(1, round(fraction * n_c))`` randomly chosen indices, so every class present stays
    present. Multi-label ``[N, L]`` labels cannot be stratified by class; a plain random
    subset of ``max(1, round(fraction * N))`` indices is drawn instead.

    Args:
        labels: ``[N]`` (or ``[N, 1]``) integer class labels, or ``[N, L]`` multi-label.
        fraction: Fraction of labelled samples to keep, in (0, 1].
        seed: Seed for ``numpy.random.Generator``; the same inputs give the same result.

    Returns:
        Sorted int64 indices; all indices when ``fraction == 1``.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise MedsslError(f"label fraction must be a number in (0, 1], got {fraction!r}")
    if not (0.0 < fraction <= 1.0):
        raise MedsslError(f"label fraction must be in (0, 1], got {fraction}")
    y = _as_numpy(labels)
    n = y.shape[0]
    if fraction == 1.0:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    if y.ndim == 2:
        chosen = rng.choice(n, size=_count(fraction, n), replace=False)
        return np.sort(chosen).astype(np.int64)
    parts = []
    for cls in np.unique(y):
        members = np.flatnonzero(y == cls)
        parts.append(rng.choice(members, size=_count(fraction, members.size), replace=False))
    return np.sort(np.concatenate(parts)).astype(np.int64)


def save_indices(
    path: str | os.PathLike, indices: np.ndarray | list[int], /, **meta: object
) -> Path:
    """Write ``{"indices": [...], **meta}`` as JSON atomically (``medssl.io.atomic_write``).

    Returns:
        The path written.
    """
    if "indices" in meta:
        raise MedsslError("save_indices: 'indices' cannot be used as a metadata key")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"indices": [int(i) for i in np.asarray(indices).ravel()], **meta}
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=1)
            fh.write("\n")

    atomic_write(path, write)
    return path


def load_indices(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """Read a file written by :func:`save_indices`; return (int64 indices, metadata)."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        indices = np.asarray(payload.pop("indices"), dtype=np.int64)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise MedsslError(f"{path}: not a valid indices file ({type(exc).__name__})") from exc
    return indices, payload
