"""Exact resume: a run stopped right after a mid-epoch checkpoint and resumed ends with the same
weights, buffers (queues, momentum encoders, the methods' generators) and optimizer state, bit for
bit, as an uninterrupted one. CPU fp32, one process, the default thread count: oneDNN's CPU
kernels are deterministic for a fixed thread count, so no ``use_deterministic_algorithms`` is needed."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from medssl.config import PretrainConfig
from medssl.data.loaders import TensorBatches
from medssl.engine import fit, seed_everything
from medssl.engine import trainer as trainer_module
from medssl.engine.checkpoint import load_checkpoint, save_checkpoint
from medssl.errors import MedsslError
from medssl.methods import create_method
from medssl.registry import create_backbone

# 20 images in batches of 4: 5 steps an epoch, 10 in all; checkpoints at steps 3, 5 (epoch end), 6, 9
SPEC = PretrainConfig(epochs=2, batch_size=4, lr=1e-2, warmup_epochs=0.5)
ARGS = {"simclr": {"proj_hidden_dim": 16, "proj_dim": 8},
        "moco_v2": {"proj_hidden_dim": 16, "proj_dim": 8, "queue_size": 12},
        "byol": {"proj_hidden_dim": 16, "proj_dim": 8, "pred_hidden_dim": 16},
        "genesis": {}}


class Killed(Exception):
    """Stands in for SIGKILL right after a checkpoint (the subprocess test does the real thing)."""


def new_model(method: str, spatial_dims: int) -> torch.nn.Module:
    seed_everything(0)
    net = create_backbone("resnet18_small", spatial_dims, 1, width=0.125)
    return create_method(method, net, spatial_dims, 12, ARGS[method])


def train(method, spatial_dims, data, run_dir, resume=False):
    model = new_model(method, spatial_dims)
    fit(model, TensorBatches(data, None, SPEC.batch_size, seed=3), SPEC, run_dir, checkpoint_steps=3,
        resume=resume, log_every=1)
    return model


@pytest.mark.parametrize(("method", "spatial_dims", "kill_at"),
                         [("simclr", 2, 6), ("moco_v2", 2, 3), ("byol", 2, 6), ("genesis", 2, 6),
                          ("moco_v2", 3, 6), ("genesis", 3, 3)])
def test_resume_after_a_mid_epoch_checkpoint_is_bit_exact(tmp_path, monkeypatch, method, spatial_dims,
                                                          kill_at):
    data = torch.randint(0, 256, (20, 1, *[12] * spatial_dims), dtype=torch.uint8)
    full = train(method, spatial_dims, data, tmp_path / "full")
    full_state = load_checkpoint(tmp_path / "full" / "checkpoint.safetensors")[1]

    save = trainer_module._save_checkpoint

    def save_then_die(model, optimizer, scaler, run_dir, step, *args):
        save(model, optimizer, scaler, run_dir, step, *args)
        if step == kill_at:
            raise Killed

    monkeypatch.setattr(trainer_module, "_save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        train(method, spatial_dims, data, tmp_path / "cut")
    monkeypatch.setattr(trainer_module, "_save_checkpoint", save)
    resumed = train(method, spatial_dims, data, tmp_path / "cut", resume=True)

    expected, got = full.state_dict(), resumed.state_dict()
    assert expected.keys() == got.keys()
    for key in expected:  # weights, BN statistics, queue and pointer, targets, generator state
        assert torch.equal(expected[key], got[key]), key
    cut_state = load_checkpoint(tmp_path / "cut" / "checkpoint.safetensors")[1]
    for index, values in full_state["optimizer"]["state"].items():
        for name, value in values.items():
            assert torch.equal(value, cut_state["optimizer"]["state"][index][name]), (index, name)
    # the resumed run logs steps kill_at+1..10 with the uninterrupted run's losses
    full_log = (tmp_path / "full" / "log.jsonl").read_text().splitlines()
    cut_log = (tmp_path / "cut" / "log.jsonl").read_text().splitlines()
    assert [_loss(r) for r in cut_log[-(10 - kill_at):]] == [_loss(r) for r in full_log[-(10 - kill_at):]]


def _loss(line: str) -> tuple[int, float]:
    row = json.loads(line)
    return row["step"], row["loss"]


def test_a_checkpoint_killed_mid_write_leaves_the_last_good_one(tmp_path, monkeypatch):
    from medssl.engine import checkpoint as ckpt

    net = torch.nn.Linear(3, 2)
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(net, {"step": 1}, path)
    good = path.read_bytes()

    def half_written(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\x00" * 10)
        raise KeyboardInterrupt  # the process dies here

    monkeypatch.setattr(ckpt, "save_file", half_written)
    with torch.no_grad():
        net.weight.add_(1)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(net, {"step": 2}, path)
    assert path.read_bytes() == good and load_checkpoint(path)[1] == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind


def test_training_state_round_trips_through_safetensors(tmp_path):
    net = torch.nn.Linear(2, 2)  # before the RNG state is taken: its init draws from torch
    state = {"step": 7, "loss": float("nan"), "betas": (0.9, 0.999), "none": None,
             "groups": [{"params": [0, 1], "lr": 0.1}], "by_int": {0: torch.arange(3), 5: "x"},
             "array": np.arange(4, dtype=np.int64), "rng": trainer_module.rng_state()}
    save_checkpoint(net, state, tmp_path / "c.safetensors")
    weights, back = load_checkpoint(tmp_path / "c.safetensors")
    assert set(weights) == {"weight", "bias"}
    assert back["step"] == 7 and back["betas"] == (0.9, 0.999) and back["none"] is None
    assert back["groups"] == [{"params": [0, 1], "lr": 0.1}] and back["by_int"][5] == "x"
    assert torch.equal(back["by_int"][0], torch.arange(3)) and np.array_equal(back["array"], np.arange(4))
    assert back["loss"] != back["loss"]  # NaN survives
    # the RNG state restores every generator: the next draws equal those after the save
    after = (torch.rand(2), np.random.rand(2), random.random())
    trainer_module.set_rng_state(back["rng"])
    again = (torch.rand(2), np.random.rand(2), random.random())
    assert torch.equal(after[0], again[0]) and np.array_equal(after[1], again[1]) and after[2] == again[2]


def _pretrain_cmd(out, *extra):
    sets = ["model.width=0.125", "pretrain.epochs=3", "pretrain.batch_size=64", "engine.precision=fp32",
            "engine.checkpoint_steps=5", "engine.log_every=1",
            "pretrain.method_args={proj_hidden_dim: 32, proj_dim: 16}"]
    return [sys.executable, "-m", "medssl.cli", "pretrain", "--method", "simclr", "--dataset", "breastmnist",
            "--out", str(out), *[a for s in sets for a in ("--set", s)], *extra]


@pytest.mark.slow
def test_sigkilled_pretrain_resumes_to_the_same_weights(tmp_path, data_dir):
    """`medssl pretrain` on real BreastMNIST (546 images, 8 steps an epoch, 24 in all), SIGKILLed
    after its mid-epoch checkpoint at step 5 or 10, resumed with --resume: same final weights as an
    uninterrupted run, bit for bit (CPU fp32, same thread count, separate processes)."""
    env = {**os.environ, "MEDSSL_DATA_DIR": str(data_dir)}
    subprocess.run(_pretrain_cmd(tmp_path / "full"), check=True, env=env, capture_output=True)

    ckpt = tmp_path / "cut" / "checkpoint.safetensors"
    proc = subprocess.Popen(_pretrain_cmd(tmp_path / "cut"), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if ckpt.is_file() and _step(ckpt) in (5, 10):  # mid-epoch checkpoints
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = _step(ckpt)
    assert killed_at % 8 and killed_at < 24 and not (tmp_path / "cut" / "encoder.safetensors").exists()

    subprocess.run(_pretrain_cmd(tmp_path / "cut", "--resume"), check=True, env=env, capture_output=True)
    full, cut = (load_file(str(tmp_path / d / "encoder.safetensors")) for d in ("full", "cut"))
    assert full.keys() == cut.keys()
    for key in full:
        assert torch.equal(full[key], cut[key]), key
    assert _step(ckpt) == 24


def _step(path) -> int:
    with safe_open(str(path), "pt") as f:  # reads the header only: fast while the run goes on
        return dict(json.loads(f.metadata()["train_state"])["__dict__"])["step"]


def test_resuming_another_model_is_a_one_line_error(tmp_path):
    data = torch.randint(0, 256, (20, 1, 12, 12), dtype=torch.uint8)
    train("simclr", 2, data, tmp_path)
    with pytest.raises(MedsslError, match="checkpoint does not match this model"):
        train("byol", 2, data, tmp_path, resume=True)


@pytest.mark.parametrize("skeleton", ['{"__ndarray__": 5}', "[" * 100_000, '{"__tensor__": "nope"}', "3"])
def test_a_damaged_training_state_is_a_one_line_error(tmp_path, skeleton):
    from safetensors.torch import save_file

    path = tmp_path / "checkpoint.safetensors"
    save_file({"w": torch.zeros(1)}, str(path), metadata={"train_state": skeleton})
    with pytest.raises(MedsslError, match="holds no readable training state"):
        load_checkpoint(path)
