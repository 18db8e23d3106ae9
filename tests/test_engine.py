import itertools
import json
import math

import pytest
import torch
from torch import nn

from medssl.config import PretrainConfig
from medssl.data.loaders import TensorBatches, batch_indices
from medssl.engine import TrainStep, compile_parts, fit, seed_everything, trainer, unwrap
from medssl.engine import budget as budget_module
from medssl.engine.budget import PLAN_STEPS, BudgetPlan, plan
from medssl.engine.checkpoint import load_checkpoint, load_weights, save_weights
from medssl.engine.schedules import cosine_schedule
from medssl.errors import MedsslError
from medssl.methods import create_method
from medssl.registry import create_backbone


def tiny_simclr(spatial_dims=2):
    net = create_backbone("resnet18_small", spatial_dims, 1, width=0.125)
    return create_method("simclr", net, spatial_dims, 16, {"proj_hidden_dim": 32, "proj_dim": 16})


def images(n=32, spatial_dims=2):
    return torch.randint(0, 256, (n, 1, *([16] * spatial_dims)), dtype=torch.uint8)


SPEC = PretrainConfig(epochs=2, batch_size=8, lr=1e-3, warmup_epochs=1)


def test_cosine_schedule_warms_up_then_decays():
    lrs = cosine_schedule(1.0, 10, 2)
    assert len(lrs) == 10
    assert lrs[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert all(a >= b for a, b in itertools.pairwise(lrs[1:])) and lrs[-1] < 0.05


def test_batches_are_seeded_and_drop_a_lone_trailing_sample():
    a = [b.tolist() for b in batch_indices(9, 4, seed=1, drop_last=False)]
    assert [len(b) for b in a] == [4, 4]  # the batch of 1 would break BatchNorm
    assert a == [b.tolist() for b in batch_indices(9, 4, seed=1, drop_last=False)]
    assert a != [b.tolist() for b in batch_indices(9, 4, seed=2, drop_last=False)]
    assert sorted(i for b in batch_indices(10, 5, seed=3, drop_last=True) for i in b) == list(range(10))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_tensor_batches_pair_images_with_labels_and_resume_mid_epoch(spatial_dims):
    ones, twos = [1] * spatial_dims, [2] * spatial_dims
    x = torch.arange(10, dtype=torch.uint8).view(10, 1, *ones).expand(10, 1, *twos)
    y = torch.arange(10) * 7
    data = TensorBatches(x.contiguous(), y, batch_size=3, seed=5, drop_last=False, channels_last=True)
    assert len(data) == 3  # 3 + 3 + 3 + 1: the lone last image is dropped (BatchNorm)
    epoch = list(data.epoch(2))
    for b in epoch:  # image value i/255 belongs to label 7 i; floats in [0, 1]
        assert b["image"].dtype == torch.float32 and torch.equal(b["image"].flatten(1)[:, 0] * 255 * 7,
                                                                 b["label"].float())
        assert b["image"].is_contiguous(memory_format=torch.channels_last) == (spatial_dims == 2)
    tail = list(data.epoch(2, start=1))
    assert [b["label"].tolist() for b in tail] == [b["label"].tolist() for b in epoch[1:]]
    assert [b["label"].tolist() for b in data.epoch(3)] != [b["label"].tolist() for b in epoch]


def run(model, data, spec=SPEC, run_dir=None, seed=0, **kw):
    return fit(model, TensorBatches(data, None, spec.batch_size, seed), spec, run_dir, **kw)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_fit_changes_parameters_logs_and_checkpoints(tmp_path, spatial_dims):
    seed_everything(0)
    model = tiny_simclr(spatial_dims)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = run(model, images(16, spatial_dims), SPEC, tmp_path, log_every=1)
    assert result.steps == 4 and math.isfinite(result.last_loss)
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(r["img_per_s"] > 0 for r in rows)
    saved, state = load_checkpoint(tmp_path / "checkpoint.safetensors")
    assert saved.keys() == before.keys() and any(not torch.equal(saved[k], before[k]) for k in before)
    assert state["step"] == 4 and len(state["optimizer"]["state"]) > 0
    assert load_weights(tmp_path / "checkpoint.safetensors").keys() == before.keys()  # state stripped


def test_same_seed_same_numbers():
    losses = []
    for _ in range(2):
        seed_everything(0)
        losses.append(run(tiny_simclr(), images(16), SPEC, None).last_loss)
    assert losses[0] == losses[1]


def test_non_finite_loss_stops_with_a_clear_error():
    class Exploding(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

        def training_step(self, batch):
            return {"loss": self.w * float("nan")}

    with pytest.raises(MedsslError, match=r"step 0 \(epoch 0\): non-finite loss"):
        run(Exploding(), images(16), SPEC, None)


def test_non_finite_gradient_stops_naming_the_parameter():
    class BadGrad(nn.Module):  # finite loss, infinite gradient for one parameter only
        def __init__(self):
            super().__init__()
            self.fine, self.bad = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(1))

        def training_step(self, batch):
            return {"loss": self.fine.sum() + (self.bad - 1).sqrt().sum()}  # d sqrt(x)/dx at 0 = inf

    with pytest.raises(MedsslError, match=r"step 0 \(epoch 0\): non-finite gradient in parameter 'bad'"):
        run(BadGrad(), images(16), SPEC, None)


def test_too_few_images_for_a_batch():
    with pytest.raises(MedsslError, match="too few for batch size"):
        run(tiny_simclr(), images(4), SPEC, None)


def test_weights_round_trip_and_corrupt_checkpoint(tmp_path):
    net = nn.Linear(3, 2)
    save_weights(net, tmp_path / "w.safetensors")
    assert torch.equal(load_weights(tmp_path / "w.safetensors")["weight"], net.weight)
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temp file left
    (tmp_path / "bad.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(MedsslError, match=r"bad\.safetensors: not a readable safetensors"):
        load_weights(tmp_path / "bad.safetensors")


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_bf16_fit_step_has_right_gradients(spatial_dims):
    """One fit step under bf16 autocast (channels_last in 2D, as engine.channels_last defaults) against
    the same step in fp32, and every small conv's weight gradient against float64 (see
    tests/bf16_grads.py; 3D: resnet18_small at 16^3 has oneDNN's wrong 2^3 inputs in layer4)."""
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("no native bf16 on this CPU")  # the fp32 path is covered above
    from bf16_grads import assert_close_to_fp32, assert_convs_right, gradients, recording_convs

    grads = {}
    for precision in (None, torch.bfloat16):
        seed_everything(0)  # the same weights, batch and views
        model = tiny_simclr(spatial_dims)
        with recording_convs(model) as calls:
            result = run(model, images(8, spatial_dims), PretrainConfig(epochs=1, batch_size=8), None,
                         precision=precision, channels_last=precision is not None and spatial_dims == 2)
        assert result.steps == 1 and math.isfinite(result.last_loss)
        grads[precision] = gradients(model)  # the last step's, left in .grad by the optimizer
        assert_convs_right(model, calls, "bf16" if precision else "fp32", hits_the_bug=spatial_dims == 3)
    assert_close_to_fp32(grads[torch.bfloat16], grads[None])


def test_max_seconds_stops_after_the_step_that_runs_out_of_time():
    seed_everything(0)
    result = run(tiny_simclr(), images(32), SPEC, None, max_seconds=0.0)
    assert result.steps == 1 and math.isfinite(result.last_loss)  # 8 steps without the budget


def test_max_seconds_still_writes_the_checkpoint(tmp_path):
    seed_everything(0)
    run(tiny_simclr(), images(32), SPEC, tmp_path, max_seconds=0.0, checkpoint_every=100)
    assert load_checkpoint(tmp_path / "checkpoint.safetensors")[1]["step"] == 1


def tiny_byol():
    net = create_backbone("resnet18_small", 2, 1, width=0.125)
    return create_method("byol", net, 2, 16, {"proj_hidden_dim": 32, "proj_dim": 16, "pred_hidden_dim": 32})


class ScaledHead(nn.Module):
    """A linear model whose ``param_groups`` freeze the bias through its learning-rate scale."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(16 * 16, 1)

    def param_groups(self):
        return [{"params": [self.lin.weight], "lr_scale": 1.0}, {"params": [self.lin.bias], "lr_scale": 0.0}]

    def training_step(self, batch):
        return {"loss": self.lin(batch["image"].float().flatten(1) / 255).square().mean()}


@pytest.fixture
def gloo_group(tmp_path):
    """A one-process gloo group, as ``torchrun --nproc-per-node 1`` would start."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("make", [tiny_byol, ScaledHead])
def test_wrapped_model_runs_the_hooks_and_matches_the_plain_one(tmp_path, gloo_group, make):
    """DDP(TrainStep(m)) trains like m: after_step (BYOL's momentum target) and param_groups
    (a zero learning-rate scale) act on the inner module, and the checkpoint has its plain keys."""
    runs = []
    for wrapped in (False, True):
        seed_everything(0)
        model = make()
        target = [p.clone() for p in getattr(model, "target_backbone", model).parameters()]
        runner = torch.nn.parallel.DistributedDataParallel(TrainStep(model)) if wrapped else model
        assert unwrap(runner) is model
        run(runner, images(16), SPEC, tmp_path / str(wrapped))
        moved = [not torch.equal(a, b) for a, b in zip(target, getattr(model, "target_backbone", model)
                                                       .parameters(), strict=True)]
        runs.append((model.state_dict(), moved))
        saved = load_weights(tmp_path / str(wrapped) / "checkpoint.safetensors")
        assert saved.keys() == model.state_dict().keys()
    (plain, moved_plain), (ddp, moved_ddp) = runs
    assert moved_plain == moved_ddp
    if make is tiny_byol:
        assert all(moved_ddp)  # the EMA target followed the online network
    else:
        assert moved_ddp == [True, False]  # weight trained, bias held by lr_scale 0
    for k in plain:
        torch.testing.assert_close(ddp[k], plain[k], rtol=1e-5, atol=1e-6, msg=k)


def tiny_genesis():
    net = create_backbone("resnet18_small", 2, 1, width=0.125)
    return create_method("genesis", net, 2, 16, {})


def test_broadcast_sends_parameters_and_buffers_in_place_not_the_generator_state(monkeypatch):
    """NCCL cannot send the CPU ``_extra_state`` (a corruption generator's state), and a broadcast
    into a state-dict copy would change nothing: rank 0's parameters and buffers, each in place."""
    model, sent = tiny_genesis(), []
    monkeypatch.setattr(torch.distributed, "broadcast", lambda t, src: sent.append((t.data_ptr(), src)))
    trainer._broadcast_tensors(model)
    own = [t.data_ptr() for t in itertools.chain(model.parameters(), model.buffers())]
    assert sent == [(ptr, 0) for ptr in own]


def test_every_rank_draws_its_own_corruptions(monkeypatch):
    """Per rank: torch's stream and each method generator (masks, crops, corruptions), both
    from the stream every rank shares before; the same rank twice gets the same streams."""
    states = {}
    for r in (0, 1, 0):
        monkeypatch.setattr(trainer, "rank", lambda r=r: r)
        seed_everything(0)
        model = tiny_genesis()
        trainer._seed_per_rank(model)
        states.setdefault(r, []).append((model.generator.get_state(), torch.get_rng_state()))
    (gen0, rng0), (again, rng_again) = states[0]
    gen1, rng1 = states[1][0]
    assert torch.equal(gen0, again) and torch.equal(rng0, rng_again)
    assert not torch.equal(gen0, gen1) and not torch.equal(rng0, rng1)


def test_cuda_rng_state_is_this_gpus_and_an_older_all_gpu_one_resumes_on_one(monkeypatch):
    """A run checkpointed where 8 GPUs were visible resumes where one is: the saved state is this
    process's GPU only, and an older checkpoint's per-GPU list gives the current GPU its own."""
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    nine = torch.full((4,), 9, dtype=torch.uint8)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": nine)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append(state))
    state = trainer.rng_state()
    assert [s.tolist() for s in state["cuda"]] == [[9] * 4]
    trainer.set_rng_state({**state, "cuda": [torch.full((4,), i, dtype=torch.uint8) for i in range(8)]})
    trainer.set_rng_state(state)
    assert [s.tolist() for s in restored] == [[0] * 4, [9] * 4]


def test_unwrap_names_a_module_without_training_step():
    with pytest.raises(TypeError, match="Linear has no training_step"):
        unwrap(nn.Linear(2, 2))


class Clock:
    """The trainer's ``time.perf_counter``, advanced only by the model: wall time is exact, so a
    budget holds a known number of steps however loaded the machine is."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


class Ticker(nn.Module):
    """Every step takes ``seconds`` on ``clock``."""

    def __init__(self, clock, seconds):
        super().__init__()
        self.w, self.clock, self.seconds, self.totals = nn.Parameter(torch.ones(1)), clock, seconds, []

    def training_step(self, batch):
        self.clock.now += self.seconds
        return {"loss": (self.w * batch["image"].float().mean()).square()}

    def after_step(self, step, total):
        self.totals.append(total)


def test_plan_hand_values():
    assert plan(total=1000, step=11, seconds_per_step=0.5, seconds_left=10.0) == 31
    assert plan(total=20, step=11, seconds_per_step=0.5, seconds_left=10.0) == 20  # the epochs' plan caps it
    assert plan(total=1000, step=11, seconds_per_step=0.5, seconds_left=-3.0) == 11  # already out of time


def test_max_seconds_plans_the_schedule_to_end_in_the_budget(tmp_path, monkeypatch):
    """A 2.55 s budget at 1/16 s per step (200 steps planned by epochs). Steps 2-11 are timed:
    1/16 s each; at step 11 (11/16 s gone) 1.8625 s are left, 29 whole steps, so the plan ends at
    step 40 (2.5 s), before the budget. Training ends there with the cosine's last learning rate,
    the momentum hook saw the planned total, and the checkpoint keeps the plan."""
    clock = Clock()
    monkeypatch.setattr(trainer, "time", clock)
    spec = PretrainConfig(epochs=50, batch_size=4, lr=0.1, warmup_epochs=1)
    model = Ticker(clock, 1 / 16)
    result = run(model, images(16), spec, tmp_path, max_seconds=2.55, log_every=1)
    assert model.totals[:PLAN_STEPS + 1] == [200] * (PLAN_STEPS + 1)
    assert model.totals[PLAN_STEPS + 1:] == [40] * (40 - PLAN_STEPS - 1)
    assert result.steps == 40 and clock.now == 2.5
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    lrs = cosine_schedule(0.1, 40, 4)
    assert [r["lr"] for r in rows[PLAN_STEPS + 1:]] == pytest.approx(lrs[PLAN_STEPS + 1:40])
    assert load_checkpoint(tmp_path / "checkpoint.safetensors")[1]["total"] == 40


def test_max_seconds_stops_a_run_slower_than_its_plan(tmp_path, monkeypatch):
    """Steps slow from 1/16 s to 1/8 s after the plan (40 steps): the budget still holds, and the run
    stops at the step that spends it (step 11 at 11/16 s, then 1.8625 s / (1/8 s) -> step 26)."""
    clock = Clock()
    monkeypatch.setattr(trainer, "time", clock)
    model = Ticker(clock, 1 / 16)
    slow = model.after_step

    def after_step(step, total):
        slow(step, total)
        if step + 1 == PLAN_STEPS + 1:
            model.seconds = 1 / 8

    model.after_step = after_step
    spec = PretrainConfig(epochs=50, batch_size=4, lr=0.1, warmup_epochs=1)
    result = run(model, images(16), spec, tmp_path, max_seconds=2.55, log_every=1)
    assert model.totals[-1] == 40 and result.steps == 26 and clock.now >= 2.55


@pytest.mark.parametrize(("first", "later", "budget", "plans", "end"), [
    # 11 steps at 1/16 s: 9.3125 s left -> 149 steps, plan 160; at 1 s (10% of the budget) and after
    # 10 more steps at 1/8 s (step 21, 1.9375 s gone): 8.0625 s / (1/8 s) -> 64 steps, plan 85 (and
    # again 85 at 2.5 s, step 31). Without the re-plan the budget would cut the cosine at step 86.
    (1 / 16, 1 / 8, 10.0, {11: 160, 21: 85, 31: 85}, 9.9375),
    # 11 steps at 1/8 s (1.375 s, past 10% of the budget): 8.525 s left -> 68 steps, plan 79; at
    # 25% (2.475 s: step 29, 2.5 s gone, 18 steps at 1/16 s) 7.4 s -> 118 steps, plan 147. Without
    # the re-plan the run would end at step 79 with 4.9 s of the budget unused.
    (1 / 8, 1 / 16, 9.9, {11: 79, 29: 147}, 9.875),
])
def test_max_seconds_replans_when_the_throughput_changes(tmp_path, monkeypatch, first, later, budget, plans,
                                                         end):
    clock = Clock()
    monkeypatch.setattr(trainer, "time", clock)
    model = Ticker(clock, first)
    record = model.after_step

    def after_step(step, total):
        record(step, total)
        if step + 1 == PLAN_STEPS + 1:
            model.seconds = later

    model.after_step = after_step
    made = []  # (step, last step) of every plan
    monkeypatch.setattr(budget_module, "plan", lambda *a: made.append((a[1], plan(*a))) or made[-1][1])
    spec = PretrainConfig(epochs=100, batch_size=4, lr=0.1, warmup_epochs=1)
    result = run(model, images(16), spec, tmp_path, max_seconds=budget, log_every=1)
    assert made == sorted(plans.items())
    expected, total = [], 400
    for step in range(result.steps):  # after_step(step, total) sees the plan made after step `step`
        expected.append(total)
        total = plans.get(step + 1, total)
    assert model.totals == expected
    last = max(plans)  # the step of the last plan; the run ends where it says, and the log follows its cosine
    assert result.steps == plans[last] and clock.now == end
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows[last:]] == pytest.approx(cosine_schedule(0.1, plans[last], 4)[last:])
    assert load_checkpoint(tmp_path / "checkpoint.safetensors")[1]["total"] == plans[last]


def test_budget_plan_of_a_resumed_run_times_ten_steps_before_it_replans():
    """Resumed at 2 s of a 10 s budget with a plan: only the 25% re-plan is left; the first step is
    not timed and the plan waits for 10 timed steps although 2.5 s are spent after 3 of them."""
    budget = BudgetPlan(10.0, cap=400, spent=2.0, planned=True)
    assert budget.due == [2.5]
    timed = [budget.update(101 + i, 2.125 + i / 8, (i + 1) / 8) for i in range(PLAN_STEPS)]
    assert timed == [None] * PLAN_STEPS
    assert budget.update(111, 3.375, 11 / 8) == 111 + 53  # 6.625 s left at 1/8 s per step
    assert budget.due == [] and budget.update(200, 9.0, 20.0) is None


def test_collectives_use_the_gpu_under_nccl(monkeypatch):
    """NCCL has no CPU collectives: ``rank_max`` (budgets, early stopping) sends its number on the GPU."""
    from medssl.engine import dist

    monkeypatch.setattr(dist.dist, "get_backend", lambda: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert dist.collective_device() == torch.device("cuda", 1)
    monkeypatch.setattr(dist.dist, "get_backend", lambda: "gloo")
    assert dist.collective_device() == torch.device("cpu")


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_compile_parts_traces_every_part_with_parameters_and_keeps_the_state_dict(spatial_dims):
    """Backbone and projector run through dynamo (a recording backend), the parameter-free
    augmentation does not, and the state-dict keys are the eager model's."""
    graphs = []

    def record(gm, example_inputs):
        graphs.append(type(gm).__name__)
        return gm.forward

    torch._dynamo.reset()
    model = tiny_simclr(spatial_dims)
    keys = list(model.state_dict())
    compile_parts(model, backend=record)
    assert list(model.state_dict()) == keys
    x = images(8, spatial_dims).float() / 255
    model.projector(model.backbone(x))
    assert len(graphs) >= 2  # at least one graph each for the backbone and the projector
    n = len(graphs)
    model.augment(x)
    assert len(graphs) == n  # the augmentation stays eager


def test_fit_with_compile_steps_like_eager(tmp_path):
    """engine.compile (inductor): one SGD step moves every tensor (weights and BatchNorm statistics)
    as eager does, up to float reordering (measured here: <= 1% of the step, in the first layer
    whose BatchNorm sums cancel), and the checkpoint keeps the plain keys."""
    torch._dynamo.reset()
    spec = PretrainConfig(epochs=1, batch_size=8, lr=0.05, warmup_epochs=0, optimizer="sgd")
    steps = []
    for compiled in (False, True):
        seed_everything(0)
        model = create_method("rotation", create_backbone("resnet18_small", 2, 1, width=0.125), 2, 16, {})
        init = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
        assert run(model, images(8), spec, tmp_path / str(compiled), compile=compiled).steps == 1
        steps.append({k: model.state_dict()[k] - v for k, v in init.items()})
        assert load_weights(tmp_path / str(compiled) / "checkpoint.safetensors").keys() == \
            model.state_dict().keys()
    eager, compiled = steps
    for k, step in eager.items():
        torch.testing.assert_close(compiled[k], step, rtol=0, atol=0.05 * step.abs().max().item() + 1e-7,
                                   msg=lambda m, k=k: f"{k}: {m}")
