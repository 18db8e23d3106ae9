"""A tiny end-to-end study on the real BreastMNIST file, and the CLI's handling of bad input."""

import json
import math
import re

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medssl.cli import main
from medssl.config import load_config, save_config
from medssl.errors import MedsslError
from medssl.studies.rundir import start_run

TINY = ["name=tiny", "model.width=0.125", "pretrain.epochs=1", "pretrain.batch_size=64",
        "finetune.epochs=1", "finetune.min_steps=0", "finetune.fractions=[0.1, 1.0]",
        "finetune.seeds=[0]", "engine.precision=fp32"]


def run_cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.err


# the resume test: 4 cheap cells (one 10% fraction, two seeds) rather than a 100% fine-tune
TINY_GRID = [*TINY, "finetune.fractions=[0.1]", "finetune.seeds=[0, 1]"]


def tiny_study(tmp_path, capsys, name="tiny"):
    sets = [f"output_dir={tmp_path}", *TINY_GRID, f"name={name}"]
    args = ["study", "configs/demo.yaml"] + [a for s in sets for a in ("--set", s)]
    code, err = run_cli(args, capsys)
    assert code == 0, err
    return tmp_path / name


@pytest.mark.slow
def test_tiny_study_writes_finite_in_range_metrics_and_resumes_exactly(tmp_path, capsys, monkeypatch,
                                                                         data_dir):
    run = tiny_study(tmp_path, capsys, "a")
    for f in ["config.yaml", "results.jsonl", "report.md", "report.html",
              "figures/breastmnist_label_efficiency.png",
              "pretrain/encoder.safetensors", "pretrain/log.jsonl",
              "finetune/ssl_f0.1_s0/subset_indices.json"]:
        assert (run / f).is_file(), f
    assert not (tmp_path / "a.incomplete").exists()
    rows = [json.loads(x) for x in (run / "results.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["protocol"] in ("finetune", "linear", "knn")]
    assert len(evals) == 2 * 2 * 3  # seeds x inits x protocols, one fraction
    for r in evals:
        for m in ("auc", "acc", "sensitivity", "specificity", "fpr"):
            assert math.isfinite(r[m]) and 0 <= r[m] <= 1, (r, m)
        assert r["fpr"] == pytest.approx(1 - r["specificity"])
    # each cell keeps its validation and test predictions; the row's metrics are theirs
    preds = np.load(run / "finetune/ssl_f0.1_s0/predictions.npz")
    y_test = np.load(data_dir / "breastmnist" / "breastmnist.npz")["test_labels"].ravel()
    assert np.array_equal(preds["test_y"], y_test)
    for r in (r for r in evals if r["init"] == "ssl" and r["seed"] == 0):
        p = preds[f"{r['protocol']}_test"]
        assert r["auc"] == pytest.approx(roc_auc_score(y_test == 0, p[:, 0]), abs=1e-6)  # malignant = 0
        assert 0 <= r["threshold@youden"] <= 1 and "sensitivity@sens90" in r
    ft = next(r for r in evals if r["protocol"] == "finetune")
    assert ft["params"] > 0 and ft["flops_per_sample"] > 0 and ft["peak_mem_mb"] > 0
    subset = json.loads((run / "finetune/ssl_f0.1_s0/subset_indices.json").read_text())
    assert len(subset["indices"]) == 55 and subset["fraction"] == 0.1  # 15 malignant + 40 benign
    report = (run / "report.md").read_text()
    assert "SSL − scratch" in report and "| 10% | fine-tuned | simclr | 55 | 2 |" in report
    assert {(r["device"], r["precision"]) for r in rows if r["protocol"] != "study"} == {("cpu", "fp32")}
    assert "Trained on cpu in fp32." in report
    assert [r["resumed"] for r in rows if r["protocol"] == "study"] == [False]

    # The same study killed twice (mid-pretraining, then in the third cell) and resumed equals it
    b = resumed_study(tmp_path, monkeypatch)
    rows_b = [json.loads(x) for x in (b / "results.jsonl").read_text().splitlines()]
    assert [_untimed(r) for r in rows_b] == [_untimed(r) for r in rows]
    assert [r["resumed"] for r in rows_b if r["protocol"] == "study"] == [True]

    # A finished one-seed study given a second seed with --resume runs only the new cells and equals it
    c = extended_study(tmp_path, monkeypatch)
    rows_c = [json.loads(x) for x in (c / "results.jsonl").read_text().splitlines()]
    assert [_untimed(r) for r in rows_c] == [_untimed(r) for r in rows]
    assert [r["resumed"] for r in rows_c if r["protocol"] == "study"] == [True]
    assert "| 10% | fine-tuned | simclr | 55 | 2 |" in (c / "report.md").read_text()


TIMED = {"seconds", "img_per_s", "test_seconds", "peak_mem_mb", "resumed"}  # differ between invocations


def _untimed(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in TIMED}


class Killed(BaseException):
    """Stands in for SIGKILL (a BaseException, so nothing in medssl catches it)."""


def resumed_study(tmp_path, monkeypatch):
    from medssl.engine import trainer
    from medssl.studies import classification, run_study

    cfg = load_config("configs/demo.yaml", [f"output_dir={tmp_path}", *TINY_GRID, "name=b",
                                            "engine.checkpoint_steps=3", "engine.log_every=1"])
    save, cell = trainer._save_checkpoint, classification.ClassificationTask.run_cell
    calls = []

    def save_then_die(model, optimizer, scaler, run_dir, step, *args):
        save(model, optimizer, scaler, run_dir, step, *args)
        if step == 3:  # of 8 pretraining steps
            raise Killed

    def cell_then_die(self, cfg, data, split, c, *args):
        calls.append((c.init, c.fraction, c.seed))
        rows = cell(self, cfg, data, split, c, *args)
        if len(calls) == 3:
            raise Killed  # finished its work but not its rows.json: it must be redone
        return rows

    monkeypatch.setattr(trainer, "_save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        run_study(cfg)
    assert not (tmp_path / "b").exists() and (tmp_path / "b.incomplete").is_dir()
    monkeypatch.setattr(trainer, "_save_checkpoint", save)
    monkeypatch.setattr(classification.ClassificationTask, "run_cell", cell_then_die)
    with pytest.raises(Killed):
        run_study(cfg, resume=True)
    log = [json.loads(x) for x in (tmp_path / "b.incomplete/pretrain/log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 9))  # 1-3, then 4-8 once each
    calls.clear()
    out = run_study(cfg, resume=True)
    assert calls == [("ssl", 0.1, 1), ("scratch", 0.1, 1)]  # the killed cell again, then the last one
    monkeypatch.setattr(classification.ClassificationTask, "run_cell", cell)
    return out


def extended_study(tmp_path, monkeypatch):
    from medssl.studies import classification, run_study

    run_study(load_config("configs/demo.yaml", [f"output_dir={tmp_path}", *TINY_GRID, "name=c",
                                                "finetune.seeds=[0]"]))
    encoder = (tmp_path / "c" / "pretrain" / "encoder.safetensors").read_bytes()
    cell, calls = classification.ClassificationTask.run_cell, []

    def recorded(self, cfg, data, split, c, *args):
        calls.append((c.init, c.fraction, c.seed))
        return cell(self, cfg, data, split, c, *args)

    monkeypatch.setattr(classification.ClassificationTask, "run_cell", recorded)
    out = run_study(load_config("configs/demo.yaml", [f"output_dir={tmp_path}", *TINY_GRID, "name=c"]),
                    resume=True)
    assert calls == [("ssl", 0.1, 1), ("scratch", 0.1, 1)]  # seed 0's cells and the pretraining kept
    assert (out / "pretrain" / "encoder.safetensors").read_bytes() == encoder
    assert not (tmp_path / "c.incomplete").exists()
    return out


def _finished(tmp_path, *sets):
    """A finished run directory ``tmp_path/r`` holding only the config it was made by."""
    cfg = load_config("configs/demo.yaml", [f"output_dir={tmp_path}", "name=r", *sets])
    (tmp_path / "r").mkdir()
    save_config(cfg, tmp_path / "r" / "config.yaml")
    (tmp_path / "r" / "results.jsonl").write_text("{}\n")


@pytest.mark.parametrize(("before", "after", "message"), [
    (["finetune.seeds=[0, 1]"], ["finetune.seeds=[0, 1]"], "is finished; nothing to resume"),
    (["finetune.seeds=[0, 1]"], ["finetune.seeds=[1, 2]"], "can add to it, not drop from it"),
    (["finetune.fractions=[0.1]"], ["finetune.fractions=[1.0]"], "finetune.fractions=[0.1]"),
    (["finetune.seeds=[0]"], ["finetune.seeds=[0, 1]", "finetune.lr=0.5"], "finetune.lr=0.0005"),
    (["finetune.seeds=[0]"], ["finetune.seeds=[0, 1]", "seed=3"], "has seed=0, this config 3"),
])
def test_resuming_a_finished_run_may_only_add_seeds_or_fractions(tmp_path, before, after, message):
    _finished(tmp_path, *before)
    with pytest.raises(MedsslError, match=re.escape(message)):
        start_run(load_config("configs/demo.yaml", [f"output_dir={tmp_path}", "name=r", *after]), False, True)
    assert (tmp_path / "r" / "results.jsonl").is_file() and not (tmp_path / "r.incomplete").exists()


def test_resuming_a_finished_run_with_more_seeds_and_fractions_reopens_it(tmp_path):
    _finished(tmp_path, "finetune.seeds=[0]", "finetune.fractions=[0.1]")
    cfg = load_config("configs/demo.yaml", [f"output_dir={tmp_path}", "name=r", "finetune.seeds=[0, 2]",
                                            "finetune.fractions=[0.1, 1.0]"])
    with pytest.raises(MedsslError, match="run directory exists"):  # without --resume: untouched
        start_run(cfg, False, False)
    work, final = start_run(cfg, False, True)
    assert (work, final) == (tmp_path / "r.incomplete", tmp_path / "r") and not final.exists()
    assert not (work / "results.jsonl").exists()  # rebuilt from the cells
    saved = load_config(str(work / "config.yaml"), [])
    assert (saved.finetune.seeds, saved.finetune.fractions) == ([0, 2], [0.1, 1.0])


def test_resume_prefers_the_incomplete_run_and_lets_it_add_cells_too(tmp_path):
    """A killed rerun (``--overwrite``) or a killed addition of cells leaves ``r.incomplete`` beside a
    finished ``r``: --resume continues the incomplete one, also with more seeds than it was made by."""
    _finished(tmp_path, "finetune.seeds=[0]")
    (tmp_path / "r").rename(tmp_path / "r.incomplete")
    _finished(tmp_path, "finetune.seeds=[0]")
    cfg = load_config("configs/demo.yaml", [f"output_dir={tmp_path}", "name=r", "finetune.seeds=[0, 1]"])
    work, final = start_run(cfg, False, True)
    assert work == tmp_path / "r.incomplete" and final.is_dir()  # replaced when the run finishes
    assert load_config(str(work / "config.yaml"), []).finetune.seeds == [0, 1]
    assert not (work / "results.jsonl").exists()


@pytest.mark.parametrize("text", ["", "[1, 2]", "finetune: {seeds: [0]}", "{a: ["])
def test_resuming_a_run_with_an_unreadable_config_is_a_one_line_error(tmp_path, text):
    _finished(tmp_path)
    (tmp_path / "r" / "config.yaml").write_text(text)
    cfg = load_config("configs/demo.yaml", [f"output_dir={tmp_path}", "name=r"])
    with pytest.raises(MedsslError, match=re.escape("config.yaml: not a readable run config")):
        start_run(cfg, False, True)


def assert_one_line_error(code, err, *needles):
    assert code == 2
    lines = [x for x in err.strip().splitlines() if not x.startswith("medssl: downloading")]
    assert len(lines) == 1 and lines[0].startswith("medssl: error:"), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def study_args(tmp_path, *sets):
    base = [f"output_dir={tmp_path}", "name=bad", *TINY[1:]]
    return ["study", "configs/demo.yaml"] + [a for s in (*base, *sets) for a in ("--set", s)]


def test_bad_config_key_fails_before_anything_is_written(tmp_path, capsys):
    code, err = run_cli(study_args(tmp_path, "pretrain.epoch=3"), capsys)
    assert_one_line_error(code, err, "unknown key 'pretrain.epoch'")
    assert list(tmp_path.iterdir()) == []


def test_unknown_dataset_flag(tmp_path, capsys):
    code, err = run_cli(study_args(tmp_path, "data.dataset=kneemnist"), capsys)
    assert_one_line_error(code, err, "unknown dataset 'kneemnist'")
    assert list(tmp_path.iterdir()) == []


def test_missing_file_names_the_file_and_the_env_var(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MEDSSL_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr("medssl.data.medmnist._fetch", _no_network)
    code, err = run_cli(study_args(tmp_path, "data.dataset=breastmnist"), capsys)
    assert_one_line_error(code, err, "breastmnist.npz", "MEDSSL_DATA_DIR")
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad.incomplete").exists()


def _no_network(url, dest):
    raise OSError("network unreachable")


def _write_npz(path, **arrays):
    np.savez_compressed(path, **arrays)
    return path


@pytest.mark.parametrize("problem", ["truncated", "missing_keys", "wrong_shape"])
def test_broken_npz_is_a_one_line_error_naming_the_file(tmp_path, capsys, problem):
    good = {f"{s}_images": np.zeros((n, 28, 28), np.uint8) for s, n in
            (("train", 8), ("val", 4), ("test", 4))}
    good.update({f"{s}_labels": np.zeros((n, 1), np.uint8) for s, n in
                 (("train", 8), ("val", 4), ("test", 4))})
    path = tmp_path / "breastmnist.npz"
    if problem == "truncated":
        _write_npz(path, **good)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif problem == "missing_keys":
        _write_npz(path, **{k: v for k, v in good.items() if k != "val_labels"})
    else:
        _write_npz(path, **{**good, "train_images": np.zeros((8, 32, 32), np.uint8)})
    code, err = run_cli(study_args(tmp_path, f"data.path={path}"), capsys)
    assert_one_line_error(code, err, str(path))
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad.incomplete").exists()


def test_debug_shows_the_traceback(tmp_path):
    from medssl.errors import MedsslError

    with pytest.raises(MedsslError):
        main(["--debug", *study_args(tmp_path, "data.dataset=kneemnist")])


def test_existing_run_dir_is_not_overwritten_without_the_flag(tmp_path, capsys, data_dir):
    (tmp_path / "bad").mkdir()
    code, err = run_cli(study_args(tmp_path), capsys)
    assert_one_line_error(code, err, "run directory exists", "--overwrite")
