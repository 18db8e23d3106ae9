"""torchrun semantics with two gloo processes on this CPU: exact gradients of gathered losses,
per-rank shards of the global batch, rank-0 files, and every joint-embedding method (momentum
encoders, queues, DINO's center) identical on both ranks after training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from dist_workers import (
    BUILDERS,
    LOSSES,
    PER_RANK,
    Clock,
    budgets,
    failures,
    losses,
    pair,
    resume,
    run,
    slow_then_faster,
    timed_fit,
    train,
    waits,
)

from medssl.data.loaders import TensorBatches
from medssl.engine import trainer
from medssl.engine.budget import plan
from medssl.errors import MedsslError
from medssl.losses.distributed import all_reduce_mean, gather, is_distributed, rank, world_size
from medssl.stats.intervals import delong

WORLD = 2
ROOT = Path(__file__).resolve().parents[1]


def test_single_process_is_the_identity():
    x = torch.randn(3, 2)
    assert not is_distributed() and rank() == 0 and world_size() == 1
    assert gather(x) is x and all_reduce_mean(x) is x


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two processes train every builder once (one spawn for the whole module)."""
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(train, args=(WORLD, out / "store", out, list(BUILDERS)), nprocs=WORLD)
    return out


def test_gathered_losses_give_the_single_process_gradient(tmp_path):
    """DDP over 2 processes, each with half of the batch: the averaged gradient of every gathered
    loss equals the gradient of the same loss on the whole batch in one process."""
    mp.spawn(losses, args=(WORLD, tmp_path / "store", tmp_path), nprocs=WORLD)
    got = [json.loads((tmp_path / f"grads{r}.json").read_text()) for r in range(WORLD)]
    for name in LOSSES:
        lin, x1, x2 = pair()
        LOSSES[name](lin(x1), lin(x2), False).backward()
        want = torch.cat([p.grad.flatten() for p in lin.parameters()])
        for r in range(WORLD):
            torch.testing.assert_close(torch.tensor(got[r][name]), want, rtol=1e-4, atol=1e-6,
                                       msg=f"{name} rank {r}")


def test_two_processes_train_like_one_on_the_global_batch(trained, tmp_path):
    """Shards + DDP + gathered loss: 2 processes x 4 samples take the steps of 1 process x 8."""
    one = run("linear", tmp_path / "one").state_dict()
    for r in range(WORLD):
        two = torch.load(trained / f"linear_{r}.pt", weights_only=True)
        for k in one:
            torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-6, msg=f"{k} rank {r}")


def test_a_resumed_two_process_run_ends_where_an_uninterrupted_one_ends(tmp_path):
    """Rank 0 reads the checkpoint and every rank takes its weights, optimizer state and step."""
    mp.spawn(resume, args=(WORLD, tmp_path / "store", tmp_path), nprocs=WORLD)
    logs = [json.loads(x) for x in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs if "loss" in r] == [1, 2, 3, 4, 5, 6]  # stopped after 1, resumed
    full = torch.load(tmp_path / "full_0.pt", weights_only=True)
    for r in range(WORLD):
        cut = torch.load(tmp_path / f"cut_{r}.pt", weights_only=True)
        for k in full:
            torch.testing.assert_close(cut[k], full[k], rtol=1e-5, atol=1e-6, msg=f"{k} rank {r}")


def test_an_error_on_one_rank_stops_every_rank(tmp_path):
    """A NaN loss on rank 1 only and a mismatched checkpoint read by rank 0 only raise on both ranks
    at the same step, each saying where the fault was (before, the other rank waited for its peer
    in DDP's all-reduce or the resume broadcast until the group's timeout)."""
    mp.spawn(failures, args=(WORLD, tmp_path / "store", tmp_path), nprocs=WORLD)
    errors = [json.loads((tmp_path / f"errors{r}.json").read_text()) for r in range(WORLD)]
    assert errors[0][0] == ("train: step 1 (epoch 0): non-finite loss on another rank; lower the learning "
                            "rate or use engine.precision=fp32")
    assert errors[1][0] == errors[0][0].replace("another rank", "this rank")
    for err in errors:
        assert len(err) == 2 and err[1].startswith(f"{tmp_path / 'linear' / 'checkpoint.safetensors'}: "
                                                   "checkpoint does not match this model")


def test_ranks_wait_for_each_other_beyond_the_group_timeout(tmp_path):
    """A study's ranks wait for each other's cells (minutes to hours) in ``wait_for_all``, not in a
    barrier bound by the group's timeout (2 s here: rank 1 works 4 s); its gloo group is made once
    per process group."""
    mp.spawn(waits, args=(WORLD, tmp_path / "store", tmp_path), nprocs=WORLD)
    waited = sorted(p.name for p in tmp_path.glob("waited*"))
    assert waited == [f"waited{r}_{i}" for r in range(WORLD) for i in range(3)]
    for r in range(WORLD):  # one wait group per process group
        assert json.loads((tmp_path / f"groups{r}.json").read_text()) == ["gloo", "gloo"]


def test_a_budget_plans_every_rank_from_the_slowest(tmp_path, monkeypatch):
    """Two ranks of different speed under a 60 s budget (fake clocks) take the steps, and the
    learning rate at each, of one process at the slow rank's speed: plans and re-plans (10% and 25%
    of the budget) use the slowest rank's throughput and time, and both ranks stop together."""
    mp.spawn(budgets, args=(WORLD, tmp_path / "store", tmp_path / "two"), nprocs=WORLD)
    clock = Clock(slow_then_faster)
    monkeypatch.setattr(trainer, "time", clock)
    timed_fit(clock, tmp_path / "one")
    lines = {d: (tmp_path / d / "log.jsonl").read_text().splitlines() for d in ("one", "two")}
    one, two = ([(r["step"], r["lr"]) for r in map(json.loads, lines[d])] for d in ("one", "two"))
    assert two == one  # the same plans from the same (all-reduced, float64) times
    steps = [json.loads((tmp_path / "two" / f"steps{r}.json").read_text()) for r in range(WORLD)]
    assert steps == [len(one), len(one)]  # together, where the slow rank's clock passes 60 s
    assert 250 < len(one) < 320  # (rank 0 alone, at 0.1 s a step, would plan ~600)
    # the re-plans moved the end: the first plan (after step 11) saw 0.3 s a step, 200 steps
    assert plan(3000, 11, 0.3, 60 - 11 * 0.3) == 200 < len(one) - 40


def test_gradient_accumulation_takes_the_same_step(tmp_path):
    """accumulate=2 (two micro-batches of 4, one optimizer step) equals the batch of 8 for a loss
    that is a mean of per-sample terms, step for step and learning rate for learning rate."""
    whole = run("squares", tmp_path / "a").state_dict()
    micro = run("squares", tmp_path / "b", accumulate=2).state_dict()
    logs = [[json.loads(line) for line in (tmp_path / d / "log.jsonl").read_text().splitlines()]
            for d in ("a", "b")]
    assert [(r["step"], r["lr"]) for r in logs[0]] == [(r["step"], r["lr"]) for r in logs[1]]
    for k in whole:
        torch.testing.assert_close(micro[k], whole[k], rtol=1e-5, atol=1e-6, msg=k)
    with pytest.raises(MedsslError, match=r"not a multiple of engine\.accumulate"):
        run("squares", tmp_path / "c", accumulate=3)


def test_torchrun_study_matches_one_process_on_real_breastmnist(tmp_path, data_dir):
    """``torchrun --nproc-per-node 2 -m medssl study`` on real BreastMNIST against one process with
    the same global batch (64): pretraining on both ranks, fine-tuning cells spread over them.

    - Scratch cells involve no pretraining and run in one process each: equal bit for bit.
    - Pretraining cannot be bit-equal: the two ranks draw their augmentations from their own RNG
      streams and BatchNorm normalises over 32 images instead of 64. Tolerance: the 2-process loss
      curve and SSL metrics must be no further from the 1-process run (seed 0) than a 1-process run
      with another seed (1) is, plus 10% (a different seed changes the augmentation streams and
      the initialisation, so it bounds what DDP may change); SSL test AUCs (kNN, linear probe,
      fine-tuned; mean over the 2 fine-tuning seeds) within two DeLong standard errors of the
      1-process AUC: 156 test images cannot resolve a smaller difference."""
    sets = ["model.width=0.125", "pretrain.epochs=3", "pretrain.batch_size=64", "finetune.epochs=1",
            "finetune.min_steps=0", "finetune.fractions=[0.1]", "finetune.seeds=[0, 1]",
            "engine.precision=fp32", "engine.log_every=1", f"output_dir={tmp_path}"]
    runs, losses = {}, {}
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    for name, launcher, seed in (("one", [], 0), ("two", torchrun, 0), ("other_seed", [], 1)):
        args = [sys.executable, *launcher, "-m", "medssl", "study", "configs/demo.yaml",
                *[x for s in [*sets, f"name={name}", f"seed={seed}"] for x in ("--set", s)]]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MEDSSL_DATA_DIR": str(data_dir)}
        done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[name] = [json.loads(x) for x in (tmp_path / name / "results.jsonl").read_text().splitlines()]
        log = [json.loads(x) for x in (tmp_path / name / "pretrain" / "log.jsonl").read_text().splitlines()]
        losses[name] = np.array([r["loss"] for r in log if "loss" in r])
    one, two = runs["one"], runs["two"]
    assert [(r["protocol"], r.get("init"), r.get("seed")) for r in two] == \
        [(r["protocol"], r.get("init"), r.get("seed")) for r in one]  # every row once, in grid order
    assert (tmp_path / "two" / "report.md").is_file() and not (tmp_path / "two.incomplete").exists()
    timed = {"seconds", "img_per_s", "test_seconds", "name", "peak_mem_mb"}
    scratch = [[{k: v for k, v in r.items() if k not in timed} for r in rows if r.get("init") == "scratch"]
               for rows in (one, two)]
    assert scratch[0] == scratch[1] and len(scratch[0]) == 6
    assert len(losses["two"]) == len(losses["one"]) == 24  # 546 images // 64 = 8 steps x 3 epochs
    ddp_gap = np.abs(losses["two"] - losses["one"]).max()
    seed_gap = np.abs(losses["other_seed"] - losses["one"]).max()
    assert ddp_gap <= 1.1 * seed_gap, (ddp_gap, seed_gap)
    assert losses["two"][-1] < losses["two"][0]  # and it learns
    preds = np.load(tmp_path / "one" / "finetune" / "ssl_f0.1_s0" / "predictions.npz")
    malignant = preds["test_y"].ravel() == 0  # demo.yaml: positive_class 0
    for protocol in ("knn", "linear", "finetune"):
        auc = {n: np.mean([r["auc"] for r in runs[n] if r.get("protocol") == protocol
                           and r.get("init") == "ssl"]) for n in runs}
        se = delong(malignant, preds[f"{protocol}_test"][:, 0])["se"]  # test-set resolution of an AUC
        assert abs(auc["two"] - auc["one"]) <= 2 * se, (protocol, auc, se)


@pytest.mark.parametrize("name", [n for n in BUILDERS if n not in ("linear", "squares")])
def test_every_method_stays_identical_across_ranks(trained, name):
    """Weights, momentum encoders, MoCo's queue and DINO's center are the same on both ranks; the
    corruption generators (Models Genesis's) differ, so the ranks do not draw the same corruptions."""
    states = [torch.load(trained / f"{name}_{r}.pt", weights_only=True) for r in range(WORLD)]
    assert states[0].keys() == states[1].keys()
    for k in states[0]:
        if k.endswith(PER_RANK):
            assert not torch.equal(states[1][k], states[0][k]), k
        else:
            torch.testing.assert_close(states[1][k], states[0][k], rtol=0, atol=0, msg=k)
    if name == "genesis":
        assert any(k.endswith(PER_RANK) for k in states[0])


def test_rank_zero_alone_writes(trained):
    """One log and one checkpoint per model, from rank 0, with the global batch's throughput."""
    rows = [json.loads(line) for line in (trained / "simclr" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # 16 images, global batch 8, 2 epochs
    assert (trained / "simclr" / "checkpoint.safetensors").is_file()


def test_shards_split_each_global_batch():
    x = torch.arange(20, dtype=torch.uint8)[:, None, None, None].expand(20, 1, 2, 2).contiguous()
    one = TensorBatches(x, None, 8, seed=1, drop_last=False, rank=0, world=1)
    parts = [TensorBatches(x, None, 8, seed=1, drop_last=False, rank=r, world=2) for r in range(2)]
    full = [b["image"][:, 0, 0, 0] for b in one.epoch(0)]
    split = list(zip(*(p.epoch(0) for p in parts), strict=True))
    assert len(full) == 3 and len(split) == 3 == len(parts[0])  # 8, 8, 4: every rank gets 2 of the last
    for whole, (a, b) in zip(full, split, strict=True):
        assert torch.equal(torch.cat([a["image"][:, 0, 0, 0], b["image"][:, 0, 0, 0]]), whole)
    three = TensorBatches(x[:19], None, 8, seed=1, drop_last=False, rank=0, world=2)
    assert len(three) == 2  # a trailing 3 cannot give both ranks 2 samples: dropped on all ranks


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs (NCCL)")
def test_nccl_two_gpus_with_sync_batchnorm_stay_identical(tmp_path):
    """On a machine with 2 GPUs: NCCL, SyncBatchNorm and every joint-embedding method, Models Genesis
    (its corruption generator) and MAE (a ViT) in bf16; the generators alone differ per rank."""
    from dist_workers import train_cuda

    names = [n for n in BUILDERS if n not in ("linear", "squares")]
    mp.spawn(train_cuda, args=(WORLD, tmp_path / "store", tmp_path, names), nprocs=WORLD)
    for name in names:
        states = [torch.load(tmp_path / f"{name}_{r}.pt", weights_only=True) for r in range(WORLD)]
        for k in states[0]:
            if not k.endswith(PER_RANK):
                torch.testing.assert_close(states[1][k], states[0][k], rtol=0, atol=0, msg=f"{name} {k}")
