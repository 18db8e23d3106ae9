"""The segmentation benchmarks state, from the config, whether pretraining saw the test fold's images
and what their intervals cover."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _result(pool: str, seeds: list[int], folds: list[int]) -> dict:
    return {"config": {"seed": 3, "pretrain": {"checkpoint": None},
                       "segmentation": {"pretrain_pool": pool}, "finetune": {"seeds": seeds}},
            "folds": folds, "dice_rule": "x"}


def test_segmentation_notes_follow_the_pretraining_pool_and_run_count():
    notes = bench("segmentation").notes
    seen = notes(_result("all", [0], [0]))
    assert "saw the test fold's images" in seen[0] and "pretrain_pool: all" in seen[0]
    assert "seed 3" in seen[1] and "single fine-tuning run" in seen[1] and len(seen) == 2
    kept = notes(_result("train", [0, 1], [0, 1]))
    assert "saw" not in kept[0] and "left out of pretraining" in kept[0]
    assert "sample std over 4 fine-tuning runs" in kept[1]
    assert "before 6a66d92" in notes({**_result("all", [0], [0]), "dice_rule": None})[-1]


@pytest.mark.parametrize("pool", ["all", "train"])
def test_distortion_notes_come_from_each_entry_config(pool, monkeypatch, tmp_path):
    module = bench("distortion_seg")
    rows = [{"dataset": "isbi2012", "init": init, "seeds": 3} for init in ("scratch", "genesis")]
    table = [{**r, **module.provenance(r, tmp_path, [f"segmentation.pretrain_pool={pool}"])} for r in rows]
    assert table[0]["pretrainings"] == 0 and table[1]["pretrainings"] == 1
    assert table[1]["pretrain_pool"] == pool and table[1]["pretrain_seed"] == 0
    notes = module.notes(table, {"dice_rule": "x"})
    assert ("saw the test fold's images (isbi2012)" in notes[0]) == (pool == "all")
    assert ("left out of pretraining: isbi2012" in notes[0]) == (pool == "train")
    assert "fine-tuning seeds only (3 per row)" in notes[-1] and "one pretraining (seed 0)" in notes[-1]
    assert "before 6a66d92" in module.notes(table, {})[-1]  # an older file without meta.dice_rule
