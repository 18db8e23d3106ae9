"""Benchmark grids, dry runs, cross-dataset pretraining, second test sets and multi-label studies,
end to end on small synthetic MedMNIST-style files (CLI, tiny models)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medssl.cli import main
from medssl.data.medmnist import DATA_DIR_ENV

N = {"train": 64, "val": 32, "test": 40}
TINY = ["model.width=0.125", "pretrain.epochs=1", "pretrain.batch_size=32", "finetune.epochs=1",
        "finetune.min_steps=2", "finetune.batch_size=16", "finetune.fractions=[1.0]", "finetune.seeds=[0]",
        "engine.precision=fp32", "pretrain.method_args={}"]


def write_npz(root, flag, labels=2, multi=False, shift=0):
    """A MedMNIST-style file: 28 px grey images whose mean brightness follows the (first) label."""
    rng = np.random.default_rng(shift)
    arrays = {}
    for split, n in N.items():
        y = rng.integers(0, 2, (n, labels)) if multi else rng.integers(0, labels, (n, 1))
        base = 60 + 80 * (y[:, :1] if multi else y) + shift
        images = rng.normal(base[:, :, None], 30, (n, 28, 28))
        arrays[f"{split}_images"] = np.clip(images, 0, 255).astype(np.uint8)
        arrays[f"{split}_labels"] = y.astype(np.uint8)
    np.savez(root / f"{flag}.npz", **arrays)


@pytest.fixture
def data(tmp_path, monkeypatch):
    root = tmp_path / "data"
    root.mkdir()
    write_npz(root, "breastmnist")
    write_npz(root, "pneumoniamnist", shift=20)
    monkeypatch.setenv(DATA_DIR_ENV, str(root))
    monkeypatch.setenv("MEDSSL_CACHE_DIR", str(tmp_path / "cache"))
    return root


def cli(tmp_path, *sets, extra=()):
    args = ["study", "configs/demo.yaml", *extra]
    for s in (*TINY, f"output_dir={tmp_path / 'runs'}", *sets):
        args += ["--set", s]
    return main(args)


def rows_of(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_a_grid_runs_every_dataset_and_method_and_reports_them_together(tmp_path, data, capsys):
    grid = ["name=g", "grid.datasets=[breastmnist, pneumoniamnist]", "grid.methods=[simclr, denoising]"]
    assert cli(tmp_path, *grid) == 0, capsys.readouterr().err
    root = tmp_path / "runs" / "g"
    rows = rows_of(root / "results.jsonl")
    studies = sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "results.jsonl").is_file())
    assert studies == ["breastmnist_denoising", "breastmnist_simclr", "pneumoniamnist_denoising",
                       "pneumoniamnist_simclr"]
    ft = [(r["dataset"], r["method"], r["init"]) for r in rows if r["protocol"] == "finetune"]
    want = [(d, m, "ssl") for d in ("breastmnist", "pneumoniamnist") for m in ("simclr", "denoising")]
    want += [(d, "simclr", "scratch") for d in ("breastmnist", "pneumoniamnist")]  # scratch once each
    assert sorted(ft) == sorted(want)
    text = (root / "report.md").read_text()
    assert "## breastmnist" in text and "## pneumoniamnist" in text
    assert "| 100% | fine-tuned | denoising |" in text and (root / "report.html").is_file()
    assert (root / "breastmnist_denoising" / "corruptions.png").is_file()  # a restorative method's grid
    assert (root / "breastmnist_simclr" / "embedding.npz").is_file()


def test_grid_studies_take_combinations_and_overrides_by_dataset_and_method(tmp_path, data):
    from medssl.config import load_config
    from medssl.errors import MedsslError
    from medssl.studies.sweep import grid_studies

    cfg = load_config("configs/demo.yaml", [
        "grid.datasets=[breastmnist, pneumoniamnist]", "grid.methods=[simclr, genesis+simclr]",
        "grid.overrides={pneumoniamnist: [model.width=0.25], genesis+simclr: [pretrain.epochs=3], "
        "breastmnist/simclr: [pretrain.epochs=7]}"])
    studies = {s.name: s for s in grid_studies(cfg)}
    assert list(studies) == ["breastmnist_simclr", "breastmnist_genesis+simclr", "pneumoniamnist_simclr",
                             "pneumoniamnist_genesis+simclr"]
    combo = studies["pneumoniamnist_genesis+simclr"]
    assert combo.pretrain.method == "combo" and combo.pretrain.method_args == {
        "weights": {"genesis": 1.0, "simclr": 1.0}}
    assert (combo.pretrain.epochs, combo.model.width, combo.finetune.inits) == (3, 0.25, ["ssl"])
    assert studies["breastmnist_simclr"].pretrain.epochs == 7  # dataset/method, after the others
    assert studies["pneumoniamnist_simclr"].pretrain.epochs == 150  # demo.yaml's
    cfg.grid.overrides["chestmnist"] = ["model.width=1"]
    with pytest.raises(MedsslError, match=r"grid\.overrides: chestmnist is not a dataset"):
        grid_studies(cfg)


def test_a_dry_run_lists_every_cell_with_a_measured_cost_and_writes_nothing(tmp_path, data, capsys):
    grid = ["name=d", "grid.datasets=[breastmnist]", "grid.methods=[simclr, denoising]",
            "finetune.fractions=[0.5, 1.0]", "finetune.seeds=[0, 1]"]
    assert cli(tmp_path, *grid, extra=["--dry-run"]) == 0
    out = capsys.readouterr().out
    cells = [line for line in out.splitlines() if line.startswith("| breastmnist_")]
    assert len(cells) == 2 + 2 * 2 * 2 + 2 * 2  # 2 pretrainings; simclr ssl+scratch; denoising ssl
    assert all(float(line.split("|")[-2]) >= 0 for line in cells) and "Total:" in out
    assert not (tmp_path / "runs").exists()


def test_cross_dataset_pretraining_and_a_second_test_set(tmp_path, data, capsys):
    pool = tmp_path / "pool"
    pool.mkdir()
    rng = np.random.default_rng(5)
    from PIL import Image

    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(pool / f"{i}.png")
    sets = ["name=x", f"pretrain.dataset={pool}", "finetune.extra_test=[pneumoniamnist]"]
    assert cli(tmp_path, *sets) == 0, capsys.readouterr().err
    run = tmp_path / "runs" / "x"
    rows = rows_of(run / "results.jsonl")
    assert next(r for r in rows if r["protocol"] == "pretrain")["pool"] == 40  # the folder, not breast's 64
    ft = next(r for r in rows if r["protocol"] == "finetune" and r["init"] == "ssl")
    preds = np.load(run / "finetune" / "ssl_f1_s0" / "predictions.npz")
    y = preds["test_y@pneumoniamnist"].ravel()
    p = preds["finetune_test@pneumoniamnist"][:, 1]
    assert ft["auc@pneumoniamnist"] == pytest.approx(roc_auc_score(y, p))
    assert "breastmnist: second test sets" in (run / "report.md").read_text()

    write_npz(data, "organamnist", labels=11)  # other classes: refused before anything is written
    capsys.readouterr()
    assert cli(tmp_path, "name=y", "finetune.extra_test=[organamnist]") == 2
    err = capsys.readouterr().err
    assert "finetune.extra_test=organamnist: 11 classes" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs" / "y").exists() and not (tmp_path / "runs" / "y.incomplete").exists()


def test_a_multi_label_study_fine_tunes_with_bce_and_reports_per_label_auc(tmp_path, data, capsys):
    write_npz(data, "chestmnist", labels=14, multi=True)
    assert cli(tmp_path, "name=m", "data.dataset=chestmnist") == 0, capsys.readouterr().err
    run = tmp_path / "runs" / "m"
    rows = [r for r in rows_of(run / "results.jsonl") if r["protocol"] == "finetune"]
    preds = np.load(run / "finetune" / "ssl_f1_s0" / "predictions.npz")
    y, p = preds["test_y"], preds["finetune_test"]
    assert y.shape == p.shape == (N["test"], 14) and np.all((p >= 0) & (p <= 1))
    ssl = next(r for r in rows if r["init"] == "ssl")
    assert ssl["auc/atelectasis"] == pytest.approx(roc_auc_score(y[:, 0], p[:, 0]))
    assert "multi-label task" in (run / "report.md").read_text()


def test_a_resumed_grid_gives_its_finished_studies_new_seeds_and_refuses_other_changes(tmp_path, data,
                                                                                     monkeypatch):
    """--resume of a grid whose finished studies were made with one seed: with two, every study is
    reopened (``run_grid`` with resume, no overwrite); with the same config none is; with another
    learning rate it is a one-line error naming the key."""
    from medssl.config import load_config, save_config
    from medssl.errors import MedsslError
    from medssl.studies import sweep

    def config(*sets):
        grid = ["name=g", "grid.datasets=[breastmnist]", "grid.methods=[simclr, denoising]"]
        return load_config("configs/demo.yaml", [*TINY, f"output_dir={tmp_path / 'runs'}", *grid, *sets])

    for study in sweep.grid_studies(config()):
        final = tmp_path / "runs" / "g" / study.name
        final.mkdir(parents=True)
        save_config(study, final / "config.yaml")
        (final / "results.jsonl").write_text(json.dumps({"protocol": "study"}) + "\n")
    calls = []

    def run_grid(study, task, overwrite=False, resume=False):
        calls.append((study.name, study.finetune.seeds, overwrite, resume))
        return tmp_path / "runs" / "g" / study.name

    monkeypatch.setattr(sweep, "run_grid", run_grid)
    monkeypatch.setattr(sweep, "write_report", lambda root: None)
    sweep.run_grid_config(config(), resume=True)
    assert calls == []  # the same config: finished studies kept
    sweep.run_grid_config(config("finetune.seeds=[0, 1]"), resume=True)
    assert calls == [(name, [0, 1], False, True) for name in ("breastmnist_simclr", "breastmnist_denoising")]
    with pytest.raises(MedsslError, match=r"has finetune\.lr=0\.0005, this config 0\.1"):
        sweep.run_grid_config(config("finetune.seeds=[0, 1]", "finetune.lr=0.1"), resume=True)
