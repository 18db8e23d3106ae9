"""The training loop shared by pretraining and fine-tuning (after MAE's ``engine_pretrain.py``).

Data are in-memory uint8 tensors; each step takes a seeded slice, converts it to float in [0, 1]
and calls ``model.training_step(batch) -> {"loss": tensor, **logs}``.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from medssl.engine.checkpoint import load_checkpoint, save_checkpoint
from medssl.engine.schedules import cosine_schedule
from medssl.errors import MedsslError

console = Console(stderr=True)


class OptimSpec(Protocol):
    epochs: int
    batch_size: int
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


def resolve_precision(precision: str) -> torch.dtype | None:
    """"auto" -> bf16 where the CPU has native bf16 (AVX512-BF16/AMX), else fp32 (None)."""
    if precision not in ("auto", "bf16", "fp32"):
        raise MedsslError(f"engine.precision must be auto, bf16 or fp32, got '{precision}'")
    supported = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if precision == "bf16" and not supported:
        raise MedsslError("engine.precision=bf16 but this CPU has no native bf16; use auto or fp32")
    return torch.bfloat16 if precision == "bf16" or (precision == "auto" and supported) else None


def resolve_channels_last(channels_last: bool | None, precision: torch.dtype | None) -> bool:
    """None -> channels_last with bf16 only. Measured here it speeds up 2D CNN training by
    1.15-1.2x in both precisions (benchmarks/results/throughput.json), but in fp32 a fine-tuning
    backward pass of a width-0.125 ResNet segfaulted inside oneDNN (torch 2.14.1), so fp32 keeps
    the default memory format unless asked."""
    return precision is not None if channels_last is None else channels_last


def make_optimizer(model: nn.Module, spec: OptimSpec) -> torch.optim.Optimizer:
    # No weight decay on biases and norm parameters (1-D tensors), as in MAE/DINO.
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": spec.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=spec.lr)
    if spec.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=spec.lr, momentum=0.9, nesterov=True)
    raise MedsslError(f"optimizer must be adamw or sgd, got '{spec.optimizer}'")


def batches(n: int, batch_size: int, seed: int, drop_last: bool) -> Iterator[torch.Tensor]:
    """Index batches of a seeded permutation; a trailing batch of 1 is always dropped (BatchNorm)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        if len(idx) < batch_size and (drop_last or len(idx) < 2):
            break
        yield idx


def to_batch(images: torch.Tensor, labels: torch.Tensor | None, idx: torch.Tensor,
             channels_last: bool) -> dict[str, torch.Tensor]:
    """uint8 [N, C, *S] slice -> {"image": float [B, C, *S] in [0, 1], "label": [B]}."""
    x = images[idx].float().div_(255)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    batch = {"image": x}
    if labels is not None:
        batch["label"] = labels[idx]
    return batch


def steps_per_epoch(n: int, batch_size: int, drop_last: bool) -> int:
    full, rest = divmod(n, batch_size)
    return full + (0 if drop_last or rest < 2 else 1)


def fit(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None, spec: OptimSpec,
        run_dir: Path | None, seed: int, *, precision: torch.dtype | None = None,
        channels_last: bool | None = None, drop_last: bool = True, min_steps: int = 0,
        log_every: int = 10, desc: str = "train", checkpoint: bool = True,
        checkpoint_every: int = 10, checkpoint_steps: int = 0, resume: bool = False,
        on_epoch_end: Callable[[int], dict[str, Any]] | None = None,
        max_seconds: float | None = None) -> FitResult:
    """Train ``model`` on ``images`` (uint8 [N, C, *S]) for ``spec.epochs`` epochs.

    Writes ``run_dir/log.jsonl`` and, if ``checkpoint``, ``run_dir/checkpoint.safetensors`` (weights
    and training state in one atomic file) every ``checkpoint_every`` epochs, every
    ``checkpoint_steps`` steps if > 0, and after the last. ``resume`` continues from it exactly,
    mid-epoch included: the optimizer, the step (hence schedule and data order) and every RNG
    are restored, so a resumed run ends with the same weights as an uninterrupted one.
    ``on_epoch_end(epoch)`` may return metrics to log (e.g. validation AUC for model selection).
    ``max_seconds`` stops training after the first step that ends past this wall-clock budget,
    counted over resumes (the epoch is closed as usual: callback, and a checkpoint as after the
    last epoch), for same-budget benchmarks.
    """
    per_epoch = steps_per_epoch(len(images), spec.batch_size, drop_last)
    if per_epoch == 0:
        raise MedsslError(f"{desc}: {len(images)} images are too few for batch size {spec.batch_size}")
    epochs = max(spec.epochs, math.ceil(min_steps / per_epoch))
    total = epochs * per_epoch
    lrs = cosine_schedule(spec.lr, total, round(spec.warmup_epochs * per_epoch))
    # channels_last is a 2D-only memory format
    channels_last = resolve_channels_last(channels_last, precision) and images.dim() == 4
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, spec)
    state = _resume(model, optimizer, run_dir) if resume else {"step": 0, "elapsed": 0.0}
    step, elapsed = state["step"], state["elapsed"]
    if run_dir:
        run_dir.mkdir(parents=True, exist_ok=True)
        _truncate_log(run_dir / "log.jsonl", step)
    # line-buffered so that `tail -f log.jsonl` follows a run as it goes
    log = open(run_dir / "log.jsonl", "a", buffering=1) if run_dir else None  # noqa: SIM115
    seen, loss_value, t0 = 0, state.get("loss", float("nan")), time.perf_counter()

    def save() -> None:
        _save_checkpoint(model, optimizer, run_dir, step, elapsed + time.perf_counter() - t0, loss_value)

    out_of_time = False
    model.train()
    try:
        with _progress(desc, total, step) as (progress, task):
            for epoch in range(step // per_epoch, epochs):
                order = batches(len(images), spec.batch_size, seed * 100_003 + epoch, drop_last)
                for idx in itertools.islice(order, step - epoch * per_epoch, None):  # resumed mid-epoch
                    for group in optimizer.param_groups:
                        group["lr"] = lrs[step]
                    batch = to_batch(images, labels, idx, channels_last)
                    with torch.autocast("cpu", dtype=precision or torch.float32,
                                        enabled=precision is not None):
                        out = model.training_step(batch)
                    loss = out["loss"]
                    if not torch.isfinite(loss):
                        raise MedsslError(f"{desc}: non-finite loss at step {step} (epoch {epoch}); "
                                          "lower the learning rate or use engine.precision=fp32")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    grad_norm = check_gradients(model, f"{desc}: step {step} (epoch {epoch})")
                    optimizer.step()
                    if hasattr(model, "after_step"):  # momentum/EMA updates, per method
                        model.after_step(step, total)
                    step, seen, loss_value = step + 1, seen + len(idx), loss.item()
                    ips = seen / (time.perf_counter() - t0)
                    progress.update(task, advance=1, ips=ips, loss=loss_value)
                    if log and (step % log_every == 0 or step == total):
                        row = {"step": step, "epoch": epoch, "lr": lrs[step - 1],
                               "img_per_s": round(ips, 1), "grad_norm": grad_norm}
                        row.update({k: float(v.detach()) for k, v in out.items()})
                        log.write(json.dumps(row) + "\n")
                    out_of_time = (max_seconds is not None
                                   and elapsed + time.perf_counter() - t0 >= max_seconds)
                    if out_of_time:
                        break
                    if (run_dir and checkpoint and checkpoint_steps and step % checkpoint_steps == 0
                            and step % per_epoch):  # epoch ends are saved below, after the callback
                        save()
                extra = on_epoch_end(epoch) if on_epoch_end else {}
                if log and extra:
                    log.write(json.dumps({"epoch": epoch, "step": step, **extra}) + "\n")
                last = epoch + 1 == epochs or out_of_time
                if run_dir and checkpoint and ((epoch + 1) % checkpoint_every == 0 or last
                                               or (checkpoint_steps and step % checkpoint_steps == 0)):
                    save()
                model.train()
                if out_of_time:
                    break
    finally:
        if log:
            log.close()
    seconds = time.perf_counter() - t0
    return FitResult(step, seconds, seen / max(seconds, 1e-9), loss_value)


def check_gradients(model: nn.Module, where: str) -> float:
    """The global gradient L2 norm; a non-finite one stops training, naming the first bad parameter
    (one reduction per step; the per-parameter search runs only on failure)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return 0.0
    norm = float(torch.nn.utils.get_total_norm(grads))
    if not math.isfinite(norm):
        bad = next(n for n, p in model.named_parameters()
                   if p.grad is not None and not torch.isfinite(p.grad).all())
        raise MedsslError(f"{where}: non-finite gradient in parameter '{bad}'; lower the learning "
                          "rate or use engine.precision=fp32")
    return norm


@contextmanager
def _progress(desc: str, total: int, completed: int):
    """A rich progress bar with images/s and loss, removed when done."""
    columns = (TextColumn(f"[bold]{desc}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[ips]:.0f} img/s  loss {task.fields[loss]:.4f}"),
               TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
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
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal.tolist()), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer, run_dir: Path, step: int,
                     elapsed: float, loss: float) -> None:
    # The methods' own generators (corruptions, masks) are module state (``GeneratorState``), the
    # queues and momentum encoders are buffers and parameters: all inside ``model.state_dict()``.
    save_checkpoint(model, {"step": step, "elapsed": elapsed, "loss": loss,
                            "optimizer": optimizer.state_dict(), "rng": rng_state()},
                    run_dir / "checkpoint.safetensors")


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


def _resume(model: nn.Module, optimizer: torch.optim.Optimizer, run_dir: Path | None) -> dict[str, Any]:
    """Load ``run_dir/checkpoint.safetensors`` if there is one; return its step, time and loss."""
    path = run_dir / "checkpoint.safetensors" if run_dir else None
    if path is None or not path.is_file():
        return {"step": 0, "elapsed": 0.0}
    weights, state = load_checkpoint(path)
    try:
        model.load_state_dict(weights)
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise MedsslError(f"{path}: checkpoint does not match this model (another method, backbone or "
                          "width?); resume with the config it was written with") from err
    set_rng_state(state["rng"])
    console.log(f"resumed {run_dir} at step {state['step']}")
    return state
