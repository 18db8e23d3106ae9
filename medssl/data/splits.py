"""Patient-level (group) k-fold splits, hold-out train/val/test, and label fractions counted in cases.

A *group* is whatever must never straddle two splits: a patient, or a block of neighbouring slices
of one stack. All choices are seeded; :func:`save_split` writes the indices next to the run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medssl.data.subsets import label_fraction_indices
from medssl.errors import MedsslError
from medssl.io import atomic_write


def group_kfold(groups: Sequence[str], k: int, seed: int) -> np.ndarray:
    """Assign every sample a fold in ``0..k-1`` such that each group lies in exactly one fold.

    Groups are shuffled with ``seed`` and dealt round-robin, so folds differ by at most one group.

    Args:
        groups: ``[N]`` group id (e.g. pseudonymised patient id) per sample.
        k: number of folds, 2 <= k <= number of groups.
        seed: shuffling seed.

    Returns:
        ``[N]`` int64 fold per sample.
    """
    unique = sorted(set(groups))
    if not 2 <= k <= len(unique):
        raise MedsslError(f"cannot make {k} folds from {len(unique)} patients/groups "
                          f"(need 2 <= folds <= {len(unique)})")
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of = {unique[g]: i % k for i, g in enumerate(order)}
    return np.array([fold_of[g] for g in groups], dtype=np.int64)


def holdout_split(groups: Sequence[str], folds: int, test_fold: int, val_fraction: float,
                  seed: int) -> dict[str, np.ndarray]:
    """Train/val/test sample indices: fold ``test_fold`` is the test set; ``val_fraction`` of the
    remaining *groups* (at least one) is the validation set; the rest is training.

    Returns:
        ``{"train", "val", "test"}`` -> sorted int64 sample indices; no group is in two of them.
    """
    if not 0 <= test_fold < folds:
        raise MedsslError(f"test fold {test_fold} is not in 0..{folds - 1}")
    if not 0 < val_fraction < 1:
        raise MedsslError(f"validation fraction must be in (0, 1), got {val_fraction}")
    fold = group_kfold(groups, folds, seed)
    groups = np.asarray(groups, dtype=object)
    test = np.flatnonzero(fold == test_fold)
    rest = sorted(set(groups[fold != test_fold]))
    n_val = max(1, round(val_fraction * len(rest)))
    if n_val >= len(rest):
        raise MedsslError(f"{len(rest)} non-test patients/groups are too few for a validation split")
    rng = np.random.default_rng([seed, test_fold])
    val_groups = {rest[i] for i in rng.choice(len(rest), n_val, replace=False)}
    is_val = np.array([g in val_groups for g in groups])
    val = np.flatnonzero(is_val & (fold != test_fold))
    train = np.flatnonzero(~is_val & (fold != test_fold))
    return {"train": train, "val": val, "test": test}


def case_fraction(indices: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded subset of ``max(1, round(fraction * n))`` of ``indices`` (labelled cases/images).

    Segmentation cases have no class label to stratify on, so this is the unstratified case of
    :func:`medssl.data.subsets.label_fraction_indices` (one class), with the same rounding.
    """
    indices = np.asarray(indices, dtype=np.int64)
    pick = label_fraction_indices(np.zeros(len(indices), dtype=np.int64), fraction, seed)
    return indices[pick]


def group_fraction(indices: np.ndarray, groups: Sequence[str], fraction: float, seed: int) -> np.ndarray:
    """:func:`case_fraction` over the groups (patients/volumes) of ``indices``: every index of the
    ``max(1, round(fraction * n_groups))`` picked groups, in ``indices`` order.

    With one case per group this picks the same cases as ``case_fraction``; with 2D slices of
    volumes, "1 case" means every slice of one volume.
    """
    indices = np.asarray(indices, dtype=np.int64)
    of = np.asarray(groups, dtype=object)[indices]
    distinct = np.array(list(dict.fromkeys(of)), dtype=object)
    picked = set(distinct[case_fraction(np.arange(len(distinct)), fraction, seed)])
    return indices[[g in picked for g in of]]


def assert_disjoint_groups(split: dict[str, np.ndarray], groups: Sequence[str]) -> None:
    """Raise if one group has samples in two splits (a patient-level leak)."""
    groups = np.asarray(groups, dtype=object)
    seen: dict[str, str] = {}
    for name, idx in split.items():
        for g in set(groups[idx]):
            if g in seen and seen[g] != name:
                raise MedsslError(f"split leak: one patient/group is in both {seen[g]} and {name}")
            seen[g] = name


def save_split(path: str | os.PathLike, split: dict[str, np.ndarray], **meta: object) -> Path:
    """Write ``{"train": [...], "val": [...], "test": [...], **meta}`` as JSON, atomically."""
    payload = {k: [int(i) for i in v] for k, v in split.items()}
    overlap = set(payload) & set(meta)
    if overlap:
        raise MedsslError(f"save_split: metadata key '{sorted(overlap)[0]}' clashes with a split name")
    text = json.dumps({**payload, **meta}, indent=1) + "\n"
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))
    return Path(path)


def load_split(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """Read a file written by :func:`save_split`: (split dict, remaining metadata)."""
    try:
        meta = json.loads(Path(path).read_text())
        split = {k: np.asarray(meta.pop(k), np.int64) for k in ("train", "val", "test")}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise MedsslError(f"{path}: not a valid split file ({type(err).__name__})") from err
    return split, meta
