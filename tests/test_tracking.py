"""engine.tracking: TensorBoard scalars mirror the log.jsonl rows exactly (steps and values)."""

import json
import sys

import pytest
import torch
from torch import nn

from medssl.cli import main
from medssl.config import PretrainConfig, load_config
from medssl.data.loaders import TensorBatches
from medssl.engine import fit, seed_everything
from medssl.engine.tracking import NoTracker, make_tracker, scalars
from medssl.errors import MedsslError

SPEC = PretrainConfig(epochs=2, batch_size=4, lr=1e-2, warmup_epochs=1)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(16, 2)

    def training_step(self, batch):
        out = self.lin(batch["image"].flatten(1))
        return {"loss": out.pow(2).mean(), "mean_out": out.mean()}


def data(seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorBatches(torch.randint(0, 256, (16, 1, 4, 4), dtype=torch.uint8, generator=g), None,
                         SPEC.batch_size, seed)


def train(run_dir, tracking=("tensorboard",), spec=SPEC, on_epoch_end=None, **kw):
    seed_everything(0)
    model = Tiny()
    metric = on_epoch_end or (lambda epoch: {"val_auc": 0.5 + epoch / 10, "val_loss": 1.0 / (epoch + 3)})
    return fit(model, data(), spec, run_dir, log_every=1, tracking=list(tracking),
               on_epoch_end=metric, **kw)


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def events(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def expected(log_rows):
    """{tag: [(step, value)]} from the log.jsonl rows, as the tracker should have logged them."""
    out = {}
    for row in log_rows:
        split = "train" if "lr" in row else "val"
        for tag, value in scalars(row, split).items():
            out.setdefault(tag, []).append((row["step"], value))
    return out


def assert_same(got, want):
    assert got.keys() == want.keys()
    for tag in want:
        assert [s for s, _ in got[tag]] == [s for s, _ in want[tag]], tag
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in want[tag]], rel=1e-6), tag  # float32


def test_tensorboard_scalars_equal_the_log_rows(tmp_path):
    pytest.importorskip("tensorboard")
    train(tmp_path)
    log_rows = rows(tmp_path)
    assert [r["step"] for r in log_rows if "lr" in r] == [1, 2, 3, 4, 5, 6, 7, 8]
    got, want = events(tmp_path), expected(log_rows)
    assert {"train/loss", "train/lr", "train/img_per_s", "train/grad_norm", "train/epoch", "train/mean_out",
            "val/val_auc", "val/val_loss"} == set(want)
    assert got["val/val_auc"] == [(4, pytest.approx(0.5)), (8, pytest.approx(0.6))]
    assert_same(got, want)


def test_a_resumed_run_hides_the_events_it_redoes(tmp_path):
    pytest.importorskip("tensorboard")

    def killed(epoch):  # dies at the end of epoch 1, after its steps were logged; checkpoint at step 4
        if epoch == 1:
            raise RuntimeError("killed")
        return {"val_auc": 0.5}

    with pytest.raises(RuntimeError, match="killed"):
        train(tmp_path, on_epoch_end=killed, checkpoint_every=1)
    assert len(events(tmp_path)["train/loss"]) == 8  # flushed with each row
    train(tmp_path, resume=True, checkpoint_every=1)
    log_rows = rows(tmp_path)
    assert [r["step"] for r in log_rows if "lr" in r] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert_same(events(tmp_path), expected(log_rows))  # steps 5-8 once, with the resumed run's values


def test_no_tracking_writes_no_tensorboard_dir(tmp_path):
    train(tmp_path, tracking=())
    assert rows(tmp_path) and not (tmp_path / "tensorboard").exists()
    assert isinstance(make_tracker([], tmp_path, "x"), NoTracker)
    assert isinstance(make_tracker(["tensorboard"], None, "x"), NoTracker)  # ranks other than 0
    train(None)  # no run directory: nothing written, no error


def test_a_missing_package_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(MedsslError) as err:
        train(tmp_path)
    assert str(err.value) == ("engine.tracking=tensorboard needs the tensorboard package: "
                              "pip install 'medssl[tracking]'")


def test_mlflow_is_not_supported_yet(tmp_path):
    with pytest.raises(MedsslError, match=r"^engine.tracking=mlflow is not supported yet; use engine"):
        train(tmp_path, tracking=["mlflow"])


def test_tracking_values_are_checked_by_the_config(tmp_path, capsys):
    assert load_config(None, []).engine.tracking == []
    assert load_config(None, ["engine.tracking=[tensorboard]"]).engine.tracking == ["tensorboard"]
    with pytest.raises(MedsslError, match=r"'engine\.tracking' must be tensorboard or mlflow, got 'wandb'"):
        load_config(None, ["engine.tracking=[wandb]"])
    assert main(["pretrain", "--set", "engine.tracking=[tensorbord]", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'engine.tracking'" in err and "did you mean 'tensorboard'?" in err
    assert not (tmp_path / "r").exists()
