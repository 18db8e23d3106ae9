"""Label-fraction subsets: stratification, reproducibility, bounds, JSON round trip."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from medssl.data import subsets
from medssl.data.subsets import label_fraction_indices, load_indices, save_indices
from medssl.errors import MedsslError

CLASS_SIZES = [500, 120, 37, 3, 1]


def imbalanced_labels(seed: int = 0) -> np.ndarray:
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(CLASS_SIZES)])
    return np.random.default_rng(seed).permutation(labels).astype(np.int64)


@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.1, 0.25, 0.5, 0.9])
def test_stratified_per_class_counts(fraction: float):
    labels = imbalanced_labels()
    idx = label_fraction_indices(labels, fraction, seed=3)
    picked = np.bincount(labels[idx], minlength=len(CLASS_SIZES))
    for cls, n in enumerate(CLASS_SIZES):
        assert picked[cls] >= 1, f"class {cls} vanished"
        assert abs(picked[cls] - fraction * n) <= 1 or picked[cls] == 1
        assert picked[cls] == max(1, math.floor(fraction * n + 0.5))
    # overall class proportions follow the full set (up to the rounding of each class)
    assert abs(len(idx) - fraction * len(labels)) <= len(CLASS_SIZES)


def test_result_is_sorted_unique_int64_in_range():
    labels = imbalanced_labels()
    idx = label_fraction_indices(labels, 0.2, seed=1)
    assert idx.dtype == np.int64
    assert np.all(np.diff(idx) > 0)
    assert idx.min() >= 0 and idx.max() < len(labels)


def test_reproducible_and_input_type_independent():
    labels = imbalanced_labels()
    a = label_fraction_indices(labels, 0.1, seed=42)
    b = label_fraction_indices(labels.copy(), 0.1, seed=42)
    c = label_fraction_indices(torch.from_numpy(labels), 0.1, seed=42)
    d = label_fraction_indices(labels.reshape(-1, 1).astype(np.uint8), 0.1, seed=42)
    assert np.array_equal(a, b) and np.array_equal(a, c) and np.array_equal(a, d)


def test_different_seeds_give_different_subsets():
    labels = imbalanced_labels()
    results = {tuple(label_fraction_indices(labels, 0.1, seed=s)) for s in range(6)}
    assert len(results) == 6
    sizes = {len(r) for r in results}
    assert len(sizes) == 1  # the size depends on the labels and fraction only


def test_fraction_one_returns_everything():
    labels = imbalanced_labels()
    assert np.array_equal(label_fraction_indices(labels, 1.0, seed=0), np.arange(len(labels)))
    assert np.array_equal(label_fraction_indices(labels, 1, seed=7), np.arange(len(labels)))


@pytest.mark.parametrize("fraction", [0, 0.0, -0.1, 1.0001, 2, float("nan"), True, "0.1"])
def test_fraction_bounds(fraction):
    with pytest.raises(MedsslError, match=r"\(0, 1\]"):
        label_fraction_indices(imbalanced_labels(), fraction, seed=0)


def test_bad_labels():
    with pytest.raises(MedsslError, match="integers"):
        label_fraction_indices(np.array([0.0, 1.0, 1.0]), 0.5, seed=0)
    with pytest.raises(MedsslError, match="non-empty"):
        label_fraction_indices(np.array([], dtype=np.int64), 0.5, seed=0)


def test_multi_label_falls_back_to_random_subset():
    labels = np.random.default_rng(0).integers(0, 2, size=(200, 14))
    idx = label_fraction_indices(labels, 0.1, seed=0)
    assert len(idx) == 20 and np.all(np.diff(idx) > 0)
    assert np.array_equal(idx, label_fraction_indices(labels, 0.1, seed=0))


def test_save_and_load_round_trip(tmp_path: Path):
    idx = label_fraction_indices(imbalanced_labels(), 0.1, seed=5)
    path = tmp_path / "splits" / "breastmnist_f0.1_s5.json"
    assert save_indices(path, idx, flag="breastmnist", fraction=0.1, seed=5) == path
    raw = json.loads(path.read_text())
    assert raw["indices"] == idx.tolist()
    assert raw["flag"] == "breastmnist" and raw["fraction"] == 0.1 and raw["seed"] == 5
    loaded, meta = load_indices(path)
    assert np.array_equal(loaded, idx) and loaded.dtype == np.int64
    assert meta == {"flag": "breastmnist", "fraction": 0.1, "seed": 5}
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_save_is_atomic_on_failure(tmp_path: Path, monkeypatch):
    path = tmp_path / "idx.json"
    save_indices(path, [1, 2, 3], seed=0)
    before = path.read_text()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(subsets.json, "dump", boom)
    with pytest.raises(RuntimeError):
        save_indices(path, [4, 5], seed=1)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["idx.json"]


def test_save_rejects_indices_meta_and_load_rejects_garbage(tmp_path: Path):
    with pytest.raises(MedsslError):
        save_indices(tmp_path / "x.json", [1], indices=[2])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(MedsslError, match=r"bad\.json"):
        load_indices(bad)
