"""The training loop shared by pretraining and fine-tuning (after MAE's ``engine_pretrain.py``).

``fit`` takes a ``Batches`` source (``medssl.data.loaders``: seeded batches already on the device)
and calls ``model.training_step(batch) -> {"loss": tensor, **logs}`` under the device's autocast.
Optional hooks on the model: ``param_groups()`` (per-group learning-rate scales) and
``after_step(step, total)`` (momentum/EMA updates).

A wrapped model (``DistributedDataParallel(TrainStep(method))``, ``torch.compile``) is called as
``model(batch)``, so the wrapper's forward hooks run (DDP's gradient reduction); the hooks and the
checkpointed weights are those of the module inside (:func:`unwrap`). Under ``torchrun`` ``fit``
wraps a plain model in DDP itself; rank 0 alone logs and checkpoints (``medssl.engine.dist``).
"""

from __future__ import annotations

import itertools
import json
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from medssl.engine.budget import BudgetPlan
from medssl.engine.checkpoint import load_checkpoint, save_checkpoint
from medssl.engine.dist import (
    barrier,
    is_distributed,
    is_main,
    on_main,
    rank,
    rank_max,
    sync_batchnorm,
    world_size,
    wrap_ddp,
)
from medssl.engine.precision import autocast, grad_scaler
from medssl.engine.schedules import cosine_schedule
from medssl.engine.tracking import make_tracker
from medssl.errors import MedsslError
from medssl.losses.distributed import all_reduce_mean

console = Console(stderr=True)


class Batches(Protocol):
    """The engine's data contract: epoch by epoch, a seeded sequence of batches ``{"image": float
    [B, C, *S] in [0, 1], "label"?: [B, ...]}`` already on the training device.

    ``len()`` is the number of steps per epoch; ``epoch(e, start)`` yields the batches of epoch ``e``
    from step ``start`` on, in the same order for the same ``(seed, e)``: that is what lets a run
    resume mid-epoch exactly. Implemented by ``medssl.data.loaders.TensorBatches``.
    """

    num_items: int  # images (or volumes) per epoch
    batch_size: int

    def __len__(self) -> int: ...

    def epoch(self, epoch: int, start: int = 0) -> Iterator[dict[str, torch.Tensor]]: ...


class OptimSpec(Protocol):
    epochs: int
    optimizer: str
    lr: float
    weight_decay: float
    warmup_epochs: float


@dataclass
class FitResult:
    steps: int
    seconds: float
    images_per_second: float
    last_loss: float


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (kornia draws its augmentation parameters from torch)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class TrainStep(nn.Module):
    """``forward(batch) = module.training_step(batch)``: what a DDP or compile wrapper wraps."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.module.training_step(batch)


def unwrap(model: nn.Module) -> nn.Module:
    """The module with ``training_step`` and the hooks, inside DDP/DataParallel/``TrainStep``/
    ``torch.compile`` wrappers (each keeps the wrapped module as ``.module`` or ``._orig_mod``)."""
    while not hasattr(model, "training_step"):
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            raise TypeError(f"{type(model).__name__} has no training_step and wraps no module that has one")
        model = inner
    return model


def compile_parts(model: nn.Module, **options: Any) -> nn.Module:
    """``torch.compile`` each direct submodule of ``model`` that holds parameters (backbone,
    projector, head, U-Net...), in place with ``nn.Module.compile(**options)`` (default: inductor):
    parameter names, state dicts and checkpoints stay those of the eager model, and
    ``training_step`` (augmentation, queues, EMA updates, the loss) stays eager, where its random
    and data-dependent code would break graphs. Returns ``model``."""
    for part in model.children():
        if next(part.parameters(), None) is not None:
            part.compile(**options)
    return model


def planned_epochs(epochs: int, min_steps: int, per_epoch: int) -> int:
    """The epochs ``fit`` plans: ``epochs``, or more when they hold fewer than ``min_steps`` steps."""
    return max(epochs, math.ceil(min_steps / max(1, per_epoch)))


def make_optimizer(model: nn.Module, spec: OptimSpec) -> torch.optim.Optimizer:
    """AdamW or SGD over the model's parameter groups (``model.param_groups()`` if it has one: a
    list of ``{"params", "lr_scale"}`` covering every trainable parameter, optionally with a
    ``start_step`` before which the group's learning rate is 0), each split into decay and no-decay
    parts: no weight decay on biases and norm parameters (1-D tensors), as in MAE/DINO."""
    hook = getattr(unwrap(model), "param_groups", None)
    scaled = hook() if hook else [{"params": list(model.parameters()), "lr_scale": 1.0}]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    covered = {id(p) for g in scaled for p in g["params"] if p.requires_grad}
    if covered != trainable:
        name = type(unwrap(model)).__name__
        raise ValueError(f"{name}.param_groups() must cover each trainable parameter once")
    groups = []
    for g in scaled:
        params = [p for p in g["params"] if p.requires_grad]
        extra = {"lr_scale": g["lr_scale"], "start_step": g.get("start_step", 0)}
        groups += [{"params": [p for p in params if p.dim() > 1], "weight_decay": spec.weight_decay, **extra},
                   {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0, **extra}]
    groups = [g for g in groups if g["params"]]
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=spec.lr)
    if spec.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=spec.lr, momentum=0.9, nesterov=True)
    raise MedsslError(f"optimizer must be adamw or sgd, got '{spec.optimizer}'")


def fit(model: nn.Module, data: Batches, spec: OptimSpec, run_dir: Path | None, *,
        device: torch.device | str = "cpu", precision: torch.dtype | None = None,
        channels_last: bool = False, min_steps: int = 0, log_every: int = 10, desc: str = "train",
        checkpoint: bool = True, checkpoint_every: int = 10, checkpoint_steps: int = 0,
        resume: bool = False, on_epoch_end: Callable[[int], dict[str, Any]] | None = None,
        max_seconds: float | None = None, accumulate: int = 1, sync_bn: bool = False,
        tracking: Sequence[str] = (), compile: bool = False) -> FitResult:
    """Train ``model`` on ``data`` (batches on ``device``) for ``spec.epochs`` epochs (at least
    ``min_steps`` steps) under ``precision`` autocast (None: fp32; fp16 adds a gradient scaler).

    Writes ``run_dir/log.jsonl`` and, if ``checkpoint``, ``run_dir/checkpoint.safetensors`` (weights
    and training state in one atomic file) every ``checkpoint_every`` epochs, every
    ``checkpoint_steps`` steps if > 0, and after the last. ``resume`` continues from it exactly,
    mid-epoch included: the optimizer, the step (hence schedule and data order) and every RNG
    are restored, so a resumed run ends with the same weights as an uninterrupted one.
    ``on_epoch_end(epoch)`` may return metrics to log (e.g. validation AUC for model selection)
    and ``"stop": True`` to end training after this epoch (early stopping; the checkpoint records
    it, so a resumed early-stopped run stays stopped).
    ``max_seconds`` is a wall-clock budget, counted over resumes: after 10 timed steps the
    learning-rate schedule (warm-up, cosine decay, ``after_step``'s total) is re-planned to end at
    the step the measured throughput reaches in the budget (never later than ``spec.epochs``), and
    again at ``REPLAN_AT`` shares of the budget (``medssl.engine.budget``); training stops after the
    first step that ends past the budget either way (the epoch is closed as usual: callback, and a
    checkpoint as after the last epoch); the plan is kept in checkpoints. Under ``torchrun`` the
    slowest rank's time decides, and a resumed run re-draws each rank's random streams (augmentation,
    corruption generators) from the restored ones, so it is exact in one process only.
    ``accumulate`` splits every batch into that many micro-batches, backpropagated one after the
    other (DDP synchronises the last only) before one optimizer step: the same step with less
    memory (BatchNorm and in-batch negatives then see micro-batches). ``sync_bn``: SyncBatchNorm
    under DDP (CUDA). Under ``torchrun`` the batches are this rank's share (``TensorBatches``).
    ``tracking`` (``engine.tracking``, e.g. ``["tensorboard"]``) mirrors every log.jsonl row to
    those trackers under ``run_dir`` (``medssl.engine.tracking``). ``compile`` (``engine.compile``):
    :func:`compile_parts` of the model before training (the first step pays the compile time).
    """
    device = torch.device(device)
    per_epoch = len(data)
    if per_epoch == 0:
        raise MedsslError(f"{desc}: {data.num_items} images are too few for batch size {data.batch_size}")
    epochs = planned_epochs(spec.epochs, min_steps, per_epoch)
    total = epochs * per_epoch
    warmup = round(spec.warmup_epochs * per_epoch)
    if accumulate < 1 or data.batch_size % (accumulate * world_size()):
        raise MedsslError(f"{desc}: batch size {data.batch_size} is not a multiple of engine.accumulate "
                          f"({accumulate}) x processes ({world_size()})")
    inner = unwrap(model)  # hooks and checkpoints; ``model`` itself runs the steps
    wrapped = inner is not model
    if sync_bn:
        inner = sync_batchnorm(inner, device)
        model = model if wrapped else inner
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if compile:
        compile_parts(inner)
    if not wrapped and is_distributed():
        model, wrapped = wrap_ddp(TrainStep(inner), device), True
    step_fn = model if wrapped else inner.training_step
    main = is_main()
    run_dir = run_dir if main else None  # rank 0 writes; the others train
    optimizer = make_optimizer(model, spec)
    scaler = grad_scaler(device, precision)
    state = {"step": 0, "elapsed": 0.0}
    if resume:  # rank 0 reads the checkpoint (its error is raised on every rank); every rank takes it
        state = on_main(lambda: _resume(inner, optimizer, scaler, run_dir))
        if is_distributed():
            _share_resumed(inner, optimizer, scaler, state)
    if is_distributed():
        _seed_per_rank(inner)
    step, elapsed = state["step"], state["elapsed"]
    total = state.get("total", total)  # a budget's plan, from the checkpoint
    lrs = cosine_schedule(spec.lr, total, warmup)
    budget = BudgetPlan(max_seconds, epochs * per_epoch, elapsed, "total" in state) \
        if max_seconds is not None else None
    if run_dir:
        run_dir.mkdir(parents=True, exist_ok=True)
        _truncate_log(run_dir / "log.jsonl", step)
    tracker = make_tracker(tracking, run_dir, run_dir.name if run_dir else desc, start_step=step)
    # line-buffered so that `tail -f log.jsonl` follows a run as it goes
    log = open(run_dir / "log.jsonl", "a", buffering=1) if run_dir else None  # noqa: SIM115
    seen, loss_value, t0 = 0, state.get("loss", float("nan")), time.perf_counter()

    def save() -> None:
        if run_dir:
            _save_checkpoint(inner, optimizer, scaler, run_dir, step, elapsed + time.perf_counter() - t0,
                             loss_value, total if budget is not None and budget.planned else None,
                             stopped)

    out_of_time, done = False, False
    stopped = bool(state.get("stopped", False))  # early-stopped before a resume: nothing left to train
    model.train()
    try:
        with _progress(desc, total, step, main) as (progress, task):
            for epoch in range(epochs if stopped else step // per_epoch, epochs):
                for batch in data.epoch(epoch, start=step - epoch * per_epoch):  # resumed mid-epoch
                    lr = lrs[step]  # this step's (a re-plan after it changes the later ones)
                    for group in optimizer.param_groups:  # lr 0 leaves a group exactly as it is
                        started = step >= group.get("start_step", 0)  # (older checkpoints lack the key)
                        group["lr"] = lr * group["lr_scale"] if started else 0.0
                    where = f"{desc}: step {step} (epoch {epoch})"
                    optimizer.zero_grad(set_to_none=True)
                    out, loss = _backward(model, step_fn, batch, accumulate, device, precision, scaler, where)
                    if scaler is None:
                        grad_norm = check_gradients(inner, where)
                        optimizer.step()
                    else:  # fp16: inf/NaN gradients are the scaler's to skip, not an error
                        scaler.unscale_(optimizer)
                        grad_norm = gradient_norm(inner)
                        scaler.step(optimizer)
                        scaler.update()
                    if hasattr(inner, "after_step"):  # momentum/EMA updates, per method
                        inner.after_step(step, total)
                    n = len(batch["image"]) * world_size()
                    step, seen, loss_value = step + 1, seen + n, loss
                    now = time.perf_counter()
                    spent = rank_max(elapsed + now - t0) if budget is not None else 0.0  # the slowest rank's
                    if budget is not None and (planned := budget.update(step, spent, now)) is not None:
                        total, lrs = planned, cosine_schedule(spec.lr, planned, warmup)
                        progress.update(task, total=total)
                    done = step >= total
                    ips = seen / (time.perf_counter() - t0)
                    progress.update(task, advance=1, ips=ips, loss=loss_value)
                    if step % log_every == 0 or step == total:  # every rank: the means are collective
                        logs = {k: float(all_reduce_mean(v.detach().float().to(device)))  # NCCL: on the GPU
                                for k, v in out.items()}
                        if log:
                            row = {"step": step, "epoch": epoch, "lr": lr,
                                   "img_per_s": round(ips, 1), "grad_norm": grad_norm, **logs}
                            log.write(json.dumps(row) + "\n")
                            tracker.log(row, step)
                    out_of_time = budget is not None and spent >= max_seconds
                    if out_of_time or done:
                        break
                    if (run_dir and checkpoint and checkpoint_steps and step % checkpoint_steps == 0
                            and step % per_epoch):  # epoch ends are saved below, after the callback
                        save()
                extra = dict(on_epoch_end(epoch) or {}) if on_epoch_end else {}
                stop = _any_rank(bool(extra.pop("stop", False)))  # early stopping, on every rank
                out_of_time, stopped = out_of_time or stop, stopped or stop
                if log and extra:
                    row = {"epoch": epoch, "step": step, **extra, **({"early_stop": True} if stop else {})}
                    log.write(json.dumps(row) + "\n")
                    tracker.log(row, step, split="val")
                last = epoch + 1 == epochs or out_of_time or done
                if run_dir and checkpoint and ((epoch + 1) % checkpoint_every == 0 or last
                                               or (checkpoint_steps and step % checkpoint_steps == 0)):
                    save()
                model.train()
                if out_of_time or done:
                    break
    finally:
        if log:
            log.close()
        tracker.close()
    if is_distributed():  # BatchNorm statistics drift per rank: every rank keeps rank 0's (the saved ones)
        _broadcast_tensors(inner)
    barrier()  # rank 0's files are complete when fit returns on any rank
    seconds = time.perf_counter() - t0
    return FitResult(step, seconds, seen / max(seconds, 1e-9), loss_value)


def _backward(model: nn.Module, step_fn: Callable, batch: dict[str, torch.Tensor], parts: int,
              device: torch.device, precision: torch.dtype | None, scaler: torch.amp.GradScaler | None,
              where: str) -> tuple[dict[str, torch.Tensor], float]:
    """Forward and backward of one batch in ``parts`` micro-batches; (last outputs, mean loss)."""
    chunks = zip(*(v.chunk(parts) for v in batch.values()), strict=True)
    micro = [dict(zip(batch, values, strict=True)) for values in chunks] if parts > 1 else [batch]
    total = 0.0
    for i, part in enumerate(micro):
        sync = i == len(micro) - 1 or not hasattr(model, "no_sync")  # DDP reduces on the last only
        with nullcontext() if sync else model.no_sync():
            with autocast(device, precision):
                out = step_fn(part)
            loss = out["loss"]
            bad = not torch.isfinite(loss)
            if _any_rank(bad):  # decided together: a rank raising alone leaves the others in DDP's all-reduce
                whose = "" if not is_distributed() else " on this rank" if bad else " on another rank"
                raise MedsslError(f"{where}: non-finite loss{whose}; lower the learning rate or use "
                                  "engine.precision=fp32")
            (scaler.scale(loss / parts) if scaler is not None else loss / parts).backward()
        total += loss.item() / parts
    return out, total


def _any_rank(flag: bool) -> bool:
    """True on every rank when it is True on one (all ranks stop at the same step)."""
    return rank_max(float(flag)) > 0


def _seed_per_rank(model: nn.Module) -> None:
    """Different augmentation and corruption streams per rank, from the (identical) stream every rank
    has now: torch, NumPy, ``random`` and the methods' own generators (masks, crops, corruptions)."""
    base = int(torch.randint(0, 2**31 - 1, (1,)).item())
    torch.manual_seed(base + rank())
    np.random.seed((base + rank()) % 2**32)
    random.seed(base + rank())
    for module in model.modules():
        if isinstance(getattr(module, "generator", None), torch.Generator):
            module.generator.manual_seed(int(torch.randint(0, 2**62, (1,))))


def _broadcast_tensors(model: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank, in place. Not the rest of the state dict: a
    method's ``_extra_state`` (its corruption generator's state) is a CPU copy, which NCCL cannot send
    and a broadcast into would not change."""
    for t in itertools.chain(model.parameters(), model.buffers()):
        torch.distributed.broadcast(t.data, src=0)


def _share_resumed(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
                   state: dict[str, Any]) -> None:
    """Rank 0's resumed weights on every rank, and the checkpoint's optimizer and loss-scaler state
    (``state``, rank 0's, already sent to every rank) in every other rank's optimizer and scaler (DDP
    averages the scaled gradients, so every rank must scale by the same factor). The optimizer state
    is the checkpoint's, on the CPU (rank 0's live one sits on its GPU, where every rank would
    unpickle it); ``load_state_dict`` moves it to each rank's parameters."""
    _broadcast_tensors(model)
    if not is_main() and "optimizer" in state:  # a checkpoint was resumed (else all are fresh)
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and "scaler" in state:
            scaler.load_state_dict(state["scaler"])


def gradient_norm(model: nn.Module) -> float:
    """The global L2 norm of the gradients (0 when there are none)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0


def check_gradients(model: nn.Module, where: str) -> float:
    """The global gradient L2 norm; a non-finite one stops training, naming the first bad parameter
    (one reduction per step; the per-parameter search runs only on failure)."""
    norm = gradient_norm(model)
    if not math.isfinite(norm):
        bad = next(n for n, p in model.named_parameters()
                   if p.grad is not None and not torch.isfinite(p.grad).all())
        raise MedsslError(f"{where}: non-finite gradient in parameter '{bad}'; lower the learning "
                          "rate or use engine.precision=fp32")
    return norm


@contextmanager
def _progress(desc: str, total: int, completed: int, enabled: bool = True):
    """A rich progress bar with images/s and loss, removed when done."""
    columns = (TextColumn(f"[bold]{desc}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[ips]:.0f} img/s  loss {task.fields[loss]:.4f}"),
               TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True, disable=not enabled) as progress:
        yield progress, progress.add_task(desc, total=total, completed=completed, ips=0.0,
                                          loss=float("nan"))


def rng_state() -> dict[str, Any]:
    """Every RNG a step may draw from: torch (CPU and CUDA), NumPy and Python's ``random``."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
             "python": [version, torch.tensor(internal, dtype=torch.int64), gauss]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [torch.cuda.get_rng_state()]  # this process's GPU: a resume may see fewer GPUs
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal.tolist()), gauss))
    if "cuda" in state and torch.cuda.is_available():  # older checkpoints hold one state per visible GPU
        saved = state["cuda"]
        torch.cuda.set_rng_state(saved[min(torch.cuda.current_device(), len(saved) - 1)])


def _save_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer,
                     scaler: torch.amp.GradScaler | None, run_dir: Path, step: int, elapsed: float,
                     loss: float, total: int | None = None, stopped: bool = False) -> None:
    # The methods' own generators (corruptions, masks) are module state (``GeneratorState``), the
    # queues and momentum encoders are buffers and parameters: all inside ``model.state_dict()``.
    state = {"step": step, "elapsed": elapsed, "loss": loss, "optimizer": optimizer.state_dict(),
             "rng": rng_state()}
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    if total is not None:  # a max_seconds budget's planned last step
        state["total"] = total
    if stopped:  # early stopping ended the run
        state["stopped"] = True
    save_checkpoint(model, state, run_dir / "checkpoint.safetensors")


def _truncate_log(path: Path, step: int) -> None:
    """Drop the log rows after ``step``: a resumed run logs the steps it redoes once, not twice."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError):  # a line cut by the kill
            pass
    path.write_text("".join(f"{line}\n" for line in keep))


def _resume(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
            run_dir: Path | None) -> dict[str, Any]:
    """Load ``run_dir/checkpoint.safetensors`` if there is one; return its step, time and loss."""
    path = run_dir / "checkpoint.safetensors" if run_dir else None
    if path is None or not path.is_file():
        return {"step": 0, "elapsed": 0.0}
    weights, state = load_checkpoint(path)
    try:
        model.load_state_dict(weights)
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise MedsslError(f"{path}: checkpoint does not match this model (another method, backbone or "
                          "width?); resume with the config it was written with") from err
    set_rng_state(state["rng"])
    console.log(f"resumed {run_dir} at step {state['step']}")
    return state
