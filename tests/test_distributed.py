"""torchrun semantics with two gloo processes on this CPU: exact gradients of gathered losses,
per-rank shards of the global batch, rank-0 files, and every joint-embedding method (momentum
encoders, queues, DINO's center) identical on both ranks after training."""

from __future__ import annotations

import json

import pytest
import torch
import torch.multiprocessing as mp
from dist_workers import BUILDERS, LOSSES, losses, pair, run, train

from medssl.data.loaders import TensorBatches
from medssl.losses.distributed import all_reduce_mean, gather, is_distributed, rank, world_size

WORLD = 2


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


def test_gradient_accumulation_takes_the_same_step_without_batchnorm(tmp_path):
    """accumulate=2 (micro-batches of 4, one optimizer step) equals the whole batch for a loss that
    is a mean over micro-batches of independent terms... SimCLR's is not: only the step count and
    the schedule must match, and the weights move."""
    whole = run("linear", tmp_path / "a").state_dict()
    micro = run("linear", tmp_path / "b", accumulate=2).state_dict()
    logs = [[json.loads(line) for line in (tmp_path / d / "log.jsonl").read_text().splitlines()]
            for d in ("a", "b")]
    assert [r["step"] for r in logs[0]] == [r["step"] for r in logs[1]]
    assert [r["lr"] for r in logs[0]] == [r["lr"] for r in logs[1]]
    assert not torch.equal(whole["lin.weight"], micro["lin.weight"])


@pytest.mark.parametrize("name", [n for n in BUILDERS if n != "linear"])
def test_every_method_stays_identical_across_ranks(trained, name):
    """Weights, momentum encoders, MoCo's queue and DINO's center are the same on both ranks."""
    states = [torch.load(trained / f"{name}_{r}.pt", weights_only=True) for r in range(WORLD)]
    assert states[0].keys() == states[1].keys()
    for k in states[0]:
        torch.testing.assert_close(states[1][k], states[0][k], rtol=0, atol=0, msg=k)


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
