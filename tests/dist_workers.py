"""Process bodies for ``tests/test_distributed.py``: run under ``torch.multiprocessing.spawn`` with a
gloo group of ``world`` processes on a file store, as ``torchrun`` would start them."""

from __future__ import annotations

import json
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from medssl.config import PretrainConfig
from medssl.data.loaders import TensorBatches
from medssl.engine import fit, seed_everything, trainer
from medssl.engine.dist import wait_for_all
from medssl.errors import MedsslError
from medssl.losses import nt_xent
from medssl.losses.barlow_twins import barlow_twins_loss
from medssl.losses.moco import moco_v3_loss
from medssl.losses.vicreg import vicreg_loss

sys.path.insert(0, str(Path(__file__).parent / "methods"))
from joint_fixtures import JOINT_EMBEDDING, tiny_method

LOSSES = {
    "nt_xent": lambda z1, z2, g: nt_xent(z1, z2, 0.5, gather=g),
    "barlow_twins": lambda z1, z2, g: barlow_twins_loss(z1, z2, 0.01, gather=g),
    "vicreg": lambda z1, z2, g: vicreg_loss(z1, z2, gather=g)["loss"],
    "moco_v3": lambda z1, z2, g: moco_v3_loss(z1, z2.detach(), 0.5, gather=g),
}


def start(rank: int, world: int, store: Path, timeout: timedelta | None = None) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timeout)


def pair(n: int = 8) -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    """A linear encoder and two 'views' of n samples, identical in every process."""
    torch.manual_seed(0)
    lin = nn.Linear(8, 6)
    x = torch.randn(n, 8)
    return lin, x, 0.8 * x + 0.3 * torch.randn(n, 8)


def losses(rank: int, world: int, store: Path, out: Path) -> None:
    """Each rank takes its slice of the batch; DDP averages the gradients of the gathered loss."""
    start(rank, world, store)
    grads = {}
    for name in LOSSES:
        lin, x1, x2 = pair()
        ddp = nn.parallel.DistributedDataParallel(lin)
        part = slice(rank * len(x1) // world, (rank + 1) * len(x1) // world)
        LOSSES[name](ddp(x1[part]), ddp(x2[part]), True).backward()
        grads[name] = torch.cat([p.grad.flatten() for p in lin.parameters()]).tolist()
    (out / f"grads{rank}.json").write_text(json.dumps(grads))
    dist.destroy_process_group()


class LinearContrast(nn.Module):
    """A deterministic pretext model (no augmentation, no BatchNorm): a linear encoder of 8 x 8
    images, SimCLR's loss between an image and its mirror image."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(64, 6)

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["image"].flatten(1)
        return {"loss": nt_xent(self.lin(x), self.lin(batch["image"].flip(-1).flatten(1)), 0.5, gather=True)}


class NaNOnRankOne(LinearContrast):
    """LinearContrast whose loss turns NaN on rank 1 alone from its second step."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out, self.calls = super().training_step(batch), self.calls + 1
        if dist.get_rank() == 1 and self.calls >= 2:
            out["loss"] = out["loss"] * float("nan")
        return out


class Clock:
    """A fake ``time.perf_counter`` that moves only when a training step runs: ``per_step(i)``
    seconds for the i-th step (a rank of known, changing speed)."""

    def __init__(self, per_step) -> None:
        self.now, self.steps, self.per_step = 0.0, 0, per_step

    def perf_counter(self) -> float:
        return self.now

    def tick(self) -> None:
        self.now, self.steps = self.now + self.per_step(self.steps), self.steps + 1


def slow_then_faster(i: int) -> float:
    """0.3 s a step, 0.2 s from step 30 on: the budget's re-plans must see the change."""
    return 0.3 if i < 30 else 0.2


class Timed(LinearContrast):
    """LinearContrast whose steps advance ``clock``."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.clock.tick()
        return super().training_step(batch)


def timed_fit(clock: Clock, out: Path) -> None:
    """A 60 s budget on ``clock`` (patched into the trainer by the caller), logging every step."""
    seed_everything(0)
    spec = PretrainConfig(epochs=1000, batch_size=8, lr=1e-2, warmup_epochs=0)
    fit(Timed(clock), TensorBatches(images(24, 8), None, 8, seed=3), spec, out, log_every=1, max_seconds=60)


def budgets(rank: int, world: int, store: Path, out: Path) -> None:
    """Rank 0 steps in 0.1 s, rank 1 as :func:`slow_then_faster`: both must plan from rank 1 (a
    60 s group timeout: ranks that plan apart fail instead of hanging)."""
    start(rank, world, store, timedelta(seconds=60))
    trainer.time = clock = Clock(slow_then_faster if rank == 1 else lambda i: 0.1)
    timed_fit(clock, out)
    (out / f"steps{rank}.json").write_text(json.dumps(clock.steps))
    dist.destroy_process_group()


class LinearSquares(nn.Module):
    """A loss that is a mean of per-sample terms: micro-batches must add up to the whole batch."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(64, 3)

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"loss": (self.lin(batch["image"].flatten(1)) - 1).square().mean()}


def images(n: int, side: int, dims: int = 2) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, *[side] * dims), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(5))


BUILDERS = {
    "linear": lambda: (LinearContrast(), images(24, 8)),
    "squares": lambda: (LinearSquares(), images(24, 8)),
    **{name: (lambda name=name: (tiny_method(name, 2), images(16, 16))) for name in JOINT_EMBEDDING},
    "simclr_3d": lambda: (tiny_method("simclr", 3), images(16, 16, 3)),
    # a method with its own corruption generator (per-rank streams), and one on a ViT (MAE's decoder)
    "genesis": lambda: (tiny_method("genesis", 2), images(16, 16)),
    "mae": lambda: (tiny_method("mae", 2, backbone="vit_tiny"), images(16, 16)),
}
PER_RANK = "_extra_state"  # state-dict keys of the methods' generators: each rank draws its own


def run(name: str, out: Path, accumulate: int = 1) -> nn.Module:
    """Two epochs of ``fit`` (global batch 8) of ``BUILDERS[name]`` in this process (group or not)."""
    seed_everything(0)
    model, x = BUILDERS[name]()
    spec = PretrainConfig(epochs=2, batch_size=8, lr=1e-2, warmup_epochs=0)
    fit(model, TensorBatches(x, None, 8, seed=3), spec, out, log_every=1, accumulate=accumulate)
    return model


def train(rank: int, world: int, store: Path, out: Path, names: list[str]) -> None:
    """``run`` each model under the group; save every state tensor per rank."""
    start(rank, world, store)
    for name in names:
        model = run(name, out / name)
        state = {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
        torch.save(state, out / f"{name}_{rank}.pt")
    dist.destroy_process_group()


def train_cuda(rank: int, world: int, store: Path, out: Path, names: list[str]) -> None:
    """``train`` on GPU ``rank`` with NCCL, SyncBatchNorm and bf16 autocast."""
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"file://{store}", rank=rank, world_size=world)
    device = torch.device("cuda", rank)
    spec = PretrainConfig(epochs=2, batch_size=8, lr=1e-2, warmup_epochs=0)
    for name in names:
        seed_everything(0)
        model, x = BUILDERS[name]()
        fit(model, TensorBatches(x, None, 8, seed=3, device=device), spec, out / name, device=device,
            precision=torch.bfloat16, sync_bn=True)
        state = {k: v.cpu() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
        torch.save(state, out / f"{name}_{rank}.pt")
    dist.destroy_process_group()


def resume(rank: int, world: int, store: Path, out: Path) -> None:
    """Under the group: an uninterrupted run, and a run stopped after its first step (max_seconds)
    then resumed from rank 0's checkpoint; every rank saves both final states."""
    start(rank, world, store)
    spec = PretrainConfig(epochs=2, batch_size=8, lr=1e-2, warmup_epochs=0)
    for name, kwargs in (("full", [{}]), ("cut", [{"max_seconds": 1e-9}, {"resume": True}])):
        for kw in kwargs:
            seed_everything(0)
            model, x = BUILDERS["linear"]()
            fit(model, TensorBatches(x, None, 8, seed=3), spec, out / name, log_every=1, **kw)
        torch.save(model.state_dict(), out / f"{name}_{rank}.pt")
    dist.destroy_process_group()


def failures(rank: int, world: int, store: Path, out: Path) -> None:
    """Errors found on one rank only (a NaN loss on rank 1, a checkpoint of another model read by
    rank 0) must stop every rank at once: each rank writes the error it got. A 60 s group timeout
    turns a wait into a (failing) error instead of a hang."""
    start(rank, world, store, timedelta(seconds=60))
    spec = PretrainConfig(epochs=2, batch_size=8, lr=1e-2, warmup_epochs=0)
    errors = []
    for name, model, kwargs in (("nan", NaNOnRankOne(), {}), ("linear", LinearContrast(), {}),
                                ("linear", LinearSquares(), {"resume": True})):
        try:
            fit(model, TensorBatches(images(24, 8), None, 8, seed=3), spec, out / name, **kwargs)
        except MedsslError as err:
            errors.append(str(err))
    (out / f"errors{rank}.json").write_text(json.dumps(errors))
    dist.destroy_process_group()


def waits(rank: int, world: int, store: Path, out: Path) -> None:
    """Rank 1 works longer than the group's 2 s timeout while rank 0 waits in ``wait_for_all``:
    twice in one process group, once in a second one; counts the groups ``wait_for_all`` makes."""
    made, new_group = [], dist.new_group
    dist.new_group = lambda *args, **kwargs: made.append(kwargs) or new_group(*args, **kwargs)
    for i, fresh in enumerate((True, False, True)):  # a new process group, or the one before
        if fresh:
            if dist.is_initialized():
                dist.destroy_process_group()
            start(rank, world, store.with_suffix(f".{i}"), timedelta(seconds=2))
        if rank == 1:
            time.sleep(4)
        wait_for_all()
        (out / f"waited{rank}_{i}").touch()
    dist.destroy_process_group()
    dist.new_group = new_group
    (out / f"groups{rank}.json").write_text(json.dumps([k["backend"] for k in made]))
