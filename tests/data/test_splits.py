"""Patient-level k-fold and hold-out splits, case fractions, saved splits."""

from __future__ import annotations

import re

import numpy as np
import pytest

from medssl.data.splits import (
    assert_disjoint_groups,
    case_fraction,
    group_fraction,
    group_kfold,
    holdout_split,
    load_split,
    save_split,
)
from medssl.errors import MedsslError


def _patients(n_patients=23, seed=0):
    """Patients with 1-4 samples each, samples interleaved."""
    rng = np.random.default_rng(seed)
    groups = [f"patient{p}" for p in range(n_patients) for _ in range(rng.integers(1, 5))]
    return [groups[i] for i in rng.permutation(len(groups))]


def test_group_kfold_puts_each_patient_in_one_fold_and_balances_groups():
    groups = _patients()
    fold = group_kfold(groups, 5, seed=0)
    for g in set(groups):
        assert len({fold[i] for i, x in enumerate(groups) if x == g}) == 1
    per_fold = [len({g for g, f in zip(groups, fold, strict=True) if f == k}) for k in range(5)]
    assert max(per_fold) - min(per_fold) <= 1
    assert np.array_equal(fold, group_kfold(groups, 5, seed=0))
    assert not np.array_equal(fold, group_kfold(groups, 5, seed=1))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("test_fold", range(5))
def test_holdout_split_never_puts_one_patient_in_two_splits(seed, test_fold):
    groups = _patients(seed=seed)
    split = holdout_split(groups, 5, test_fold, 0.2, seed)
    assert_disjoint_groups(split, groups)
    names = {k: {groups[i] for i in split[k]} for k in ("train", "val", "test")}  # patient ids, directly
    assert not names["train"] & names["val"] and not names["train"] & names["test"]
    assert not names["val"] & names["test"]
    sets = [set(split[k]) for k in ("train", "val", "test")]
    assert sum(map(len, sets)) == len(groups) and set.union(*sets) == set(range(len(groups)))
    fold = group_kfold(groups, 5, seed)
    assert set(split["test"]) == set(np.flatnonzero(fold == test_fold))
    n_rest = len({g for g, f in zip(groups, fold, strict=True) if f != test_fold})
    assert len({groups[i] for i in split["val"]}) == round(0.2 * n_rest)


def test_leak_detector_catches_a_shared_patient():
    with pytest.raises(MedsslError, match="split leak"):
        assert_disjoint_groups({"train": np.array([0]), "test": np.array([1])}, ["p", "p"])


def test_too_few_patients_are_errors():
    with pytest.raises(MedsslError, match="cannot make 5 folds from 3"):
        group_kfold(["a", "b", "c"], 5, 0)
    with pytest.raises(MedsslError, match="too few"):
        holdout_split(["a", "b"], 2, 0, 0.5, 0)


@pytest.mark.parametrize("fraction,count", [(0.1, 17), (0.5, 83), (1.0, 166), (0.001, 1)])
def test_case_fraction_counts_cases(fraction, count):
    train = np.arange(100, 266)
    pick = case_fraction(train, fraction, seed=3)
    assert len(pick) == count and set(pick) <= set(train) and np.all(np.diff(pick) > 0)
    assert np.array_equal(pick, case_fraction(train, fraction, seed=3))


def test_split_file_roundtrip(tmp_path):
    split = holdout_split(_patients(), 5, 2, 0.2, 0)
    path = save_split(tmp_path / "fold2.json", split, fold=2, seed=0)
    back, meta = load_split(path)
    assert all(np.array_equal(back[k], split[k]) for k in split) and meta == {"fold": 2, "seed": 0}
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(MedsslError, match=re.escape("bad.json: not a valid split file")):
        load_split(tmp_path / "bad.json")


def test_group_fraction_takes_whole_groups():
    groups = ["a", "a", "a", "b", "b", "c", "c", "c", "d", "e"]
    train = np.array([0, 1, 2, 3, 4, 5, 6, 7])  # groups a, b, c
    one = group_fraction(train, groups, 0.01, seed=0)
    assert len({groups[i] for i in one}) == 1  # "1 case" = one whole volume
    g = groups[one[0]]
    assert one.tolist() == [i for i in train if groups[i] == g]
    assert group_fraction(train, groups, 1.0, seed=0).tolist() == train.tolist()
    singles = [str(i) for i in range(10)]  # one case per group: the same picks as case_fraction
    picks = group_fraction(np.arange(10), singles, 0.3, 5)
    assert picks.tolist() == sorted(case_fraction(np.arange(10), 0.3, 5))
