"""``pretrain.seed`` sets the pretraining (initial weights, batch order, augmentation) apart from the
study seed, which draws the splits: another pretraining of the same study, for pretraining-seed
variation in an interval."""

from __future__ import annotations

import pytest
import torch

from medssl.config import StudyConfig, from_dict
from medssl.data.types import PretrainData
from medssl.engine.checkpoint import load_weights
from medssl.studies.pretraining import pretrain


def encoder(tmp_path, dims: int, seed: int, pretrain_seed: int | None) -> tuple[dict, dict]:
    """(pretrain row, encoder weights) of one epoch of SimCLR on 8 fixed images."""
    images = torch.randint(0, 256, (8, 1, *(8,) * dims), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(dims))
    cfg = from_dict(StudyConfig, {
        "seed": seed, "model": {"width": 0.125}, "engine": {"device": "cpu", "precision": "fp32"},
        "pretrain": {"method": "simclr", "epochs": 1, "batch_size": 4, "seed": pretrain_seed}}, "test")
    run = tmp_path / f"s{seed}_p{pretrain_seed}"
    row = pretrain(cfg, PretrainData(images, dims, 1, 8), run)
    return row, load_weights(run / "encoder.safetensors")


@pytest.mark.parametrize("dims", [2, 3])
def test_pretrain_seed_decides_the_pretraining_and_the_study_seed_does_not(tmp_path, dims):
    row, study_seed = encoder(tmp_path, dims, seed=0, pretrain_seed=None)  # null: the study's seed
    same_row, same = encoder(tmp_path, dims, seed=7, pretrain_seed=0)  # another study seed, same pretraining
    other_row, other = encoder(tmp_path, dims, seed=0, pretrain_seed=1)
    assert (row["pretrain_seed"], same_row["pretrain_seed"], other_row["pretrain_seed"]) == (0, 0, 1)
    assert study_seed.keys() == same.keys() == other.keys()
    for k in study_seed:
        assert torch.equal(study_seed[k], same[k]), k
    assert any(not torch.equal(study_seed[k], other[k]) for k in study_seed if k.endswith("weight"))
