"""The segmentation benchmarks state, from the config, whether pretraining saw the test fold's images
and what their intervals cover; methods_knn's unpaired column uses only the seeds an entry does not share."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from medssl.report.segmentation import curve_lines
from medssl.stats.intervals import crossed_interval, welch_interval

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
    other = _result("all", [0], [0])
    other["config"]["pretrain"]["seed"] = 5  # pretrain.seed, not the study seed, names the pretraining
    assert "One pretraining (seed 5)" in notes(other)[1]


def test_segmentation_curve_lines_give_each_check_its_step_and_mark_the_kept_one():
    run = {"fraction": 0.1, "init": "ssl", "fold": 0, "seed": 1, "steps": 24, "best_epoch": 3,
           "val_curve": [[1, 0.5], [3, 0.8], [7, 0.75]]}  # 8 epochs of 3 steps
    old = {**run, "seed": 0, "val_curve": None}  # a row from before val_curve: no line
    assert curve_lines([run, old]) == [
        "- 0.1 ssl fold 0 seed 1: 0.500 (6) 0.800* (12) 0.750 (24)"]
    recorded = {**run, "steps": 30, "steps_per_epoch": 2}  # the row's own epoch length wins
    assert curve_lines([recorded]) == [
        "- 0.1 ssl fold 0 seed 1: 0.500 (4) 0.800* (8) 0.750 (16)"]


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
    assert module.notes(table[:1], {"dice_rule": "x"}) == [  # scratch only, so far
        "Intervals cover fine-tuning seeds (3 per row); no pretrained entry yet."]


def _knn_row(method: str, seed: int, auc: float, backbone: str = "resnet10") -> dict:
    return {"dataset": "d", "backbone": backbone, "width": 0.5, "method": method, "seed": seed,
            "knn_auc": auc, "linear_auc": auc, "knn_acc": 0.5, "linear_acc": 0.5, "epochs": 3,
            "img_per_s": 10.0}


def _table_row(md: str, method: str) -> list[str]:
    line = next(x for x in md.splitlines() if x.startswith(f"| {method} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_methods_knn_unpaired_column_uses_only_the_seeds_an_entry_does_not_share(tmp_path):
    module = bench("methods_knn")
    randoms = {0: 0.70, 1: 0.60, 2: 0.65, 3: 0.66, 4: 0.62, 5: 0.71, 6: 0.64}  # seeds 3-6: reference only
    pretrained = {0: 0.78, 1: 0.69, 2: 0.74}
    rows = [_knn_row("random-init", s, a) for s, a in randoms.items()]
    rows += [_knn_row("simclr", s, a) for s, a in pretrained.items()]
    meta = {"budget_seconds": 300, "date": "2026-12-01", "seeds": [0, 1, 2]}
    module.write(tmp_path / "k.json", meta, rows)
    md = (tmp_path / "k.md").read_text()
    assert "Reference seeds [3, 4, 5, 6]" in md and "Seeds [0, 1, 2]" in md
    cells = _table_row(md, "simclr")
    paired = [pretrained[s] - randoms[s] for s in (0, 1, 2)]  # +.08, +.09, +.09
    assert cells[7].startswith(f"{np.mean(paired):+.3f} [")
    # the Welch interval itself is checked against its formula in tests/stats/test_intervals.py
    diff, lo, hi = welch_interval(list(pretrained.values()), [randoms[s] for s in (3, 4, 5, 6)])
    assert cells[9] == f"{diff:+.3f} [{lo:+.3f}, {hi:+.3f}]"
    assert lo < 0 < diff  # the reference's spread: paired says yes, unpaired cannot
    assert (cells[8], cells[10]) == ("yes", "unclear")
    assert _table_row(md, "random-init")[2] == "7"  # every seed in the random-init row
    module.write(tmp_path / "p.json", meta, [r for r in rows if r["seed"] < 3])  # no reference seeds
    plain = (tmp_path / "p.md").read_text()
    assert "unpaired" not in plain and len(_table_row(plain, "simclr")) == 9


def test_methods_knn_table_of_an_unfinished_grid_and_of_an_old_one_seed_file(tmp_path):
    module = bench("methods_knn")
    rows = [_knn_row("random-init", s, 0.6 + s / 100) for s in range(6)] + [_knn_row("simclr", 0, 0.7)]
    module.write(tmp_path / "u.json", {"budget_seconds": 300, "date": "d", "seeds": [0, 1, 2]}, rows)
    md = (tmp_path / "u.md").read_text()  # only seed 0 pretrained so far: still the 3-seed layout
    assert "Seeds [0, 1, 2]" in md and "Reference seeds [3, 4, 5]" in md
    assert _table_row(md, "simclr")[7:] == ["+0.100", "(1 seed)", "", ""]
    old = [{k: v for k, v in r.items() if k != "seed"} for r in (rows[0], rows[-1])]  # before seeds existed
    module.write(tmp_path / "o.json", {"budget_seconds": 60, "date": "d", "seed": 0}, old)
    plain = (tmp_path / "o.md").read_text()
    assert "Reference" not in plain and _table_row(plain, "simclr")[-1] == "yes"


def test_methods_knn_kept_epoch_column_with_selection(tmp_path):
    module = bench("methods_knn")
    rows = [_knn_row("random-init", s, 0.6) for s in range(3)]
    rows += [{**_knn_row("simclr", s, 0.7), "epochs": 40.0, "selected_epoch": e}
             for s, e in enumerate((2, 4, 9))]
    meta = {"budget_seconds": 300, "date": "d", "seeds": [0, 1, 2], "select_on": "val_knn"}
    module.write(tmp_path / "s.json", meta, rows)
    md = (tmp_path / "s.md").read_text()
    assert "leave-one-out kNN AUC among the validation images" in md
    assert _table_row(md, "simclr")[3:5] == ["40.0", "5.0"]  # epochs trained, mean kept epoch
    assert _table_row(md, "random-init")[4] == ""


def _seg_entry(run, dice: dict[int, float], fraction: float = 0.1, pretrained: bool = True,
               curves: dict[int, dict] | None = None) -> None:
    """A finished distortion_seg entry: a pretrain row (SSL only) and one segmentation row per seed
    (``curves``: a seed's validation fields, ``val_curve`` etc.)."""
    run.mkdir(parents=True)
    rows = [{"protocol": "pretrain", "seconds": 1800.0, "steps": 300}] if pretrained else []
    rows += [{"protocol": "segmentation", "fraction": fraction, "seed": s, "dice_mean": d, "dice_a": d,
              "classes": ["a"], "n_labelled": 17, "n_labelled_groups": 17, "seconds": 280.0,
              **(curves or {}).get(s, {})} for s, d in dice.items()]
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_distortion_pretraining_seeds_are_their_own_rows_with_a_paired_column(tmp_path):
    """Entries <init>_pK (pretrain.seed=K) follow their init; SSL − scratch is paired by seed and
    its interval is the t-interval of the three differences, worked out here by hand."""
    module = bench("distortion_seg")
    scratch, genesis, again = {0: .70, 1: .60, 2: .65}, {0: .74, 1: .66, 2: .69}, {0: .68, 1: .62, 2: .66}
    _seg_entry(tmp_path / "hippocampus_3d_scratch", scratch, pretrained=False)
    _seg_entry(tmp_path / "hippocampus_3d_genesis", genesis)
    _seg_entry(tmp_path / "hippocampus_3d_genesis_p10", {**again, 3: .9})  # a seed scratch lacks: unpaired
    _seg_entry(tmp_path / "hippocampus_3d_genesis_p1", again)
    _seg_entry(tmp_path / "hippocampus_3d_genesis_p2.incomplete", again)  # unfinished: left out
    assert module.entries(tmp_path, "hippocampus_3d") == ["scratch", "genesis", "genesis_p1", "genesis_p10"]
    assert module.split_name("genesis_p1") == ("genesis", 1)
    assert module.split_name("scratch") == ("scratch", None)
    cfg = module.entry_config("hippocampus_3d", "genesis", tmp_path, [], 1)
    assert (cfg.name, cfg.pretrain.seed, cfg.seed) == ("hippocampus_3d_genesis_p1", 1, 0)  # same splits
    reuse = module.entry_config("hippocampus_2d_instance", "distortion_maskrcnn", tmp_path, [], 1)
    reused = tmp_path / "hippocampus_2d_distortion_maskrcnn_p1" / "pretrain" / "checkpoint.safetensors"
    assert reuse.pretrain.checkpoint == str(reused)

    module.write(tmp_path / "d.json", {"date": "2026-12-01", "cpus": 2, "torch": "x", "dice_rule": "x"},
                 module.summarise(tmp_path), tmp_path, [])
    saved = json.loads((tmp_path / "d.json").read_text())["rows"]
    assert [(r["init"], r["pretrain_seed"]) for r in saved] == [("scratch", None), ("genesis", 0),
                                                                ("genesis_p1", 1), ("genesis_p10", 10)]
    md = (tmp_path / "d.md").read_text()
    assert "`<init>_pK`" in md
    for name, arm in (("genesis", genesis), ("genesis_p1", again), ("genesis_p10", again)):
        diffs = np.array([arm[s] - scratch[s] for s in (0, 1, 2)])  # +.04 +.06 +.04 / -.02 +.02 +.01
        half = 4.302653 * diffs.std(ddof=1) / np.sqrt(3)  # t(0.975, 2 df)
        cells = _table_row(md, f"0.1 | 17 (17) | {name}")
        assert cells[6] == f"{diffs.mean():+.3f} [{diffs.mean() - half:+.3f}, {diffs.mean() + half:+.3f}] (3)"
    assert _table_row(md, "0.1 | 17 (17) | scratch")[6] == ""
    assert module.paired({"dice_by_seed": {"0": .7, "1": .6}}, {"dice_by_seed": {"0": .6, "2": .5}}) == ""
    order = [line.split(" | ")[2] for line in md.splitlines() if line.startswith("| 0.1 | 17")]
    assert order == ["scratch", "genesis", "genesis_p1", "genesis_p10"]
    # the pooled line: 3 pretrainings x the 3 seeds scratch has, interval over both
    diffs = [[arm[s] - scratch[s] for s in (0, 1, 2)] for arm in (genesis, again, again)]
    mean, (lo, hi), df = crossed_interval(diffs)
    assert mean == pytest.approx((.04 + .06 + .04 + 2 * (-.02 + .02 + .01)) / 9)
    assert _table_row(md, "0.1 | genesis")[2:] == [
        "genesis, genesis_p1, genesis_p10", "+0.047, +0.003, +0.003",
        f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}] (3 x 3, {df:.1f})"]
    pooled = json.loads((tmp_path / "d.json").read_text())["pooled"]
    assert [(p["init"], p["seeds"], p["mean"]) for p in pooled] == [("genesis", ["0", "1", "2"],
                                                                      pytest.approx(mean))]
    assert module.pooled([r for r in saved if r["init"] in ("scratch", "genesis")]) == []  # one pretraining


def test_distortion_validation_curves_are_written_and_survive_a_rebuild(tmp_path):
    """Each run's validation curve (step of every check, * = kept) and whether it still rose at the
    end; rebuilt from the JSON alone, the markdown is the same; rows saved before val_curves: none."""
    module = bench("distortion_seg")
    run = {"fold": 0, "steps": 800, "steps_per_epoch": 5}  # checks at epochs 31, 79, 159: steps 160, 400, 800
    scratch = {s: {**run, "best_epoch": 159, "val_curve": [[31, .40], [79, .50], [159, .50 + .02 * (s + 1)]]}
               for s in (0, 1)}  # +.02 / +.04 at the last check: still rising
    ssl = {s: {**run, "best_epoch": 79, "val_curve": [[31, .55], [79, .60], [159, .59]]} for s in (0, 1)}
    _seg_entry(tmp_path / "hippocampus_2d_instance_scratch", {0: .3, 1: .4}, .01, False, scratch)
    _seg_entry(tmp_path / "hippocampus_2d_instance_distortion_maskrcnn", {0: .5, 1: .5}, .01, False, ssl)
    meta = {"date": "2026-12-02", "cpus": 2, "torch": "x", "dice_rule": "x"}
    module.write(tmp_path / "d.json", meta, module.summarise(tmp_path), tmp_path, [])
    md = (tmp_path / "d.md").read_text()
    assert "- 0.01 scratch fold 0 seed 1: 0.400 (160) 0.500 (400) 0.540* (800)" in md
    assert "- 0.01 distortion_maskrcnn fold 0 seed 0: 0.550 (160) 0.600* (400) 0.590 (800)" in md
    assert ("- fraction 0.01, scratch: 2 of 2 runs kept the last of 3 validation checks; the last check "
            "added +0.030 validation Dice (mean); still rising") in md
    assert "- fraction 0.01, distortion_maskrcnn: 0 of 2 runs kept the last" in md
    saved = json.loads((tmp_path / "d.json").read_text())
    module.write(tmp_path / "again.json", saved["meta"], saved["rows"], tmp_path, [])
    assert (tmp_path / "again.md").read_text() == md
    old = [{k: v for k, v in r.items() if k != "val_curves"} for r in saved["rows"]]
    module.write(tmp_path / "old.json", saved["meta"], old, tmp_path, [])
    assert "Validation Dice at each check" not in (tmp_path / "old.md").read_text()


def test_distortion_refuses_a_pretrain_seed_that_is_the_entries_own(monkeypatch, capsys, tmp_path):
    module = bench("distortion_seg")
    args = ["--datasets", "hippocampus_3d", "--pretrain-seed", "0", "--inits", "none",  # would run nothing
            "--out-runs", str(tmp_path / "runs"), "--out", str(tmp_path / "d.json")]
    monkeypatch.setattr("sys.argv", ["distortion_seg.py", *args])
    with pytest.raises(SystemExit) as exit_:
        module.main()
    assert exit_.value.code == 2 and "--pretrain-seed 0 is hippocampus_3d's own pretraining seed" in \
        capsys.readouterr().err


def test_distortion_resume_continues_a_killed_entry_and_otherwise_starts_it_afresh(monkeypatch, tmp_path):
    module = bench("distortion_seg")
    calls = []
    monkeypatch.setattr(module, "run_study", lambda cfg, **kw: calls.append((cfg.name, kw)))
    module.run_entry("hippocampus_3d", "genesis", tmp_path, [], resume=True)  # nothing to continue
    (tmp_path / "hippocampus_3d_genesis.incomplete").mkdir()
    module.run_entry("hippocampus_3d", "genesis", tmp_path, [], resume=False)
    module.run_entry("hippocampus_3d", "genesis", tmp_path, [], resume=True)
    _seg_entry(tmp_path / "hippocampus_3d_genesis", {0: .5})
    module.run_entry("hippocampus_3d", "genesis", tmp_path, [], resume=True)  # finished: reused
    assert calls == [("hippocampus_3d_genesis", {"overwrite": True})] * 2 + [
        ("hippocampus_3d_genesis", {"resume": True})]
