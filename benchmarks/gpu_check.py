"""GPU check: the CUDA path against the CPU path, throughput and peak memory, and a study on CUDA.

    python benchmarks/gpu_check.py [--steps 30] [--skip-study]

Under 5 minutes on one GPU. Cases: SimCLR pretraining 2D (resnet18_small w0.5, 28 px, batch 128)
and 3D (resnet10 w0.5, 28^3 AdrenalMNIST3D-sized volumes, batch 32), fine-tuning (``Classifier``,
cross-entropy) and segmentation (``SegmentationNet``, U-Net over resnet10 w0.25, 32^3 patches).

(a) Parity: one training step (``model.training_step`` under ``autocast``, fp16 through a
    ``GradScaler``) on identical inputs (SimCLR views and patches drawn once on the CPU, replayed
    on both devices; TF32 off), CUDA fp32 and CUDA bf16/fp16 against CPU fp32. Compared: the
    loss, the global gradient norm, the whole gradient's relative error, and per tensor
    ``max|g - g_ref| / max|g_ref|`` (the floor of the denominator is 1e-3 of the largest
    ``max|g_ref|`` of the model: a gradient that is zero in exact arithmetic, such as a conv bias
    before InstanceNorm, is rounding noise on both devices). Tolerances and why: ``FP32`` and
    ``AUTOCAST`` below.
(b) Throughput: ``fit`` for ``--steps`` steps on ``TensorBatches`` on CUDA in bf16 and fp16
    (bf16 skipped, with a note, where the GPU lacks it): images/s and peak GPU memory.
(b') ``engine.compile``: the same parity step and throughput with ``compile_parts`` (inductor on
    CUDA: needs triton) in the GPU's autocast dtype (bf16, else fp16); the mode reads "... compile".
(c) ``medssl study configs/demo.yaml --set engine.device=cuda`` with tiny settings on BreastMNIST
    when ``$MEDSSL_DATA_DIR`` holds it.

Exit status: 0 all good; 1 a parity mismatch or a failed study (listed); 2 no CUDA GPU.
``check_parity`` runs on any device pair: ``tests/test_devices.py`` runs it CPU vs CPU, and on a
perturbed model, to test the comparison itself.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from medssl.config import PretrainConfig
from medssl.data.loaders import TensorBatches
from medssl.engine import compile_parts, fit, seed_everything
from medssl.engine.precision import autocast, grad_scaler, native_bf16, resolve_channels_last
from medssl.eval.finetune import Classifier
from medssl.eval.segmentation import SegmentationNet
from medssl.methods import create_method
from medssl.models.unet import UNet
from medssl.registry import create_backbone

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Tolerance:
    """Relative tolerances: loss; global gradient norm; whole gradient ``||g - g_ref|| / ||g_ref||``
    (direction); worst per-tensor ``max|g - g_ref| / max|g_ref|`` (None: reported, not checked)."""

    loss: float
    grad_norm: float
    direction: float
    tensor: float | None


# fp32 on two devices differs only in summation order and kernel choice (TF32 off): ~1e-7 per op.
# Measured here by changing the CPU thread count (another reduction order): loss 1e-7, gradient
# norm 1e-7, worst tensor 5e-5. 1e-3 on the loss and 1e-2 on gradients (one chain longer, through
# BatchNorm's 1/std of small batches) leave a 100x margin and catch any real divergence.
FP32 = Tolerance(loss=1e-3, grad_norm=1e-2, direction=1e-2, tensor=1e-2)
# bf16 keeps 8 mantissa bits (2^-9 = 2e-3 relative rounding per op; fp16 11 bits): on the loss and
# the gradient norm, sums of many terms, a dozen layers give ~1e-2, hence 5e-2 (measured with CPU
# bf16 autocast on the four cases: loss <= 4e-3, gradient norm <= 2.5e-2). Single gradient entries
# are differences of many cancelling terms at initialisation: there one bf16 step moves the whole
# gradient by 20-40% (worst tensor 50-70% of its scale), so autocast is held to direction <= 0.75,
# which still catches a missed unscale (65535), a sign flip (2) or lost gradients (1).
AUTOCAST = Tolerance(loss=5e-2, grad_norm=5e-2, direction=0.75, tensor=None)
FLOOR = 1e-3  # per-tensor error denominator >= FLOOR * the model's largest max|g_ref|


@dataclass
class Case:
    """A model as ``fit`` trains it, its uint8 data, and ``fixed``: turns a copy of the model and a
    few images into a deterministic step (returns the CPU batch for ``training_step``)."""

    name: str
    build: Callable[[], nn.Module]
    images: torch.Tensor
    labels: torch.Tensor | None
    batch_size: int
    parity_batch: int
    fixed: Callable[[nn.Module, torch.Tensor, torch.Tensor | None], dict[str, torch.Tensor]]


class Replay(nn.Module):
    """Stands in for a method's random augmentation: returns precomputed views in turn."""

    def __init__(self, views: list[torch.Tensor]) -> None:
        super().__init__()
        self.views, self.calls = views, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        view = self.views[self.calls % len(self.views)]
        self.calls += 1
        return view.to(x.device)


def _uint8(n: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, *shape), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


def _replay_views(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None) -> dict:
    x = images.float().div(255)
    seed_everything(1)
    model.augment = Replay([model.augment(x), model.augment(x)])  # two_views calls it twice
    return {"image": x}


def pretrain_case(spatial_dims: int, width: float = 0.5, batch_size: int | None = None,
                  size: int = 28, steps: int = 30, parity_batch: int | None = None) -> Case:
    """SimCLR: resnet18_small (2D, batch 128) or resnet10 (3D, batch 32), 28 px."""
    backbone = "resnet18_small" if spatial_dims == 2 else "resnet10"
    batch_size = batch_size or (128 if spatial_dims == 2 else 32)

    def build() -> nn.Module:
        seed_everything(0)
        net = create_backbone(backbone, spatial_dims, 1, width=width)
        return create_method("simclr", net, spatial_dims, size, {})

    return Case(f"pretrain{spatial_dims}d", build, _uint8(batch_size * steps, (size,) * spatial_dims, 0),
                None, batch_size, parity_batch or min(batch_size, 32 if spatial_dims == 2 else 8),
                _replay_views)


def finetune_case(width: float = 0.5, batch_size: int = 128, size: int = 28, steps: int = 30,
                  parity_batch: int | None = None) -> Case:
    """Classifier (resnet18_small 2D + linear head, cross-entropy, no augmentation)."""

    def build() -> nn.Module:
        seed_everything(0)
        return Classifier(create_backbone("resnet18_small", 2, 1, width=width), 2)

    labels = torch.randint(0, 2, (batch_size * steps,), generator=torch.Generator().manual_seed(1))
    return Case("finetune", build, _uint8(batch_size * steps, (size, size), 0), labels, batch_size,
                parity_batch or min(batch_size, 32),
                lambda model, x, y: {"image": x.float().div(255), "label": y})


def segment_case(width: float = 0.25, batch_size: int = 8, crop: int = 32, steps: int = 30,
                 parity_batch: int | None = None, classes: int = 3) -> Case:
    """SegmentationNet: U-Net over a 3D resnet10, random 32^3 patches of 40^3 volumes."""
    shape = (crop + 8,) * 3

    def build() -> nn.Module:
        seed_everything(0)
        unet = UNet(create_backbone("resnet10", 3, 1, width=width), classes)
        return SegmentationNet(unet, (crop,) * 3)

    def fixed(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> dict:
        model.augment = False  # patches of exactly the crop size: no random offset, flip or jitter
        inner = (slice(4, 4 + crop),) * 3
        return {"image": x[(slice(None), slice(None), *inner)].float().div(255),
                "label": y[(slice(None), *inner)].contiguous()}

    images = _uint8(batch_size * steps, shape, 0)
    labels = (images[:, 0].long() * classes // 256).to(torch.uint8)  # learnable: intensity bands
    return Case("segment", build, images, labels, batch_size, parity_batch or min(batch_size, 4), fixed)


def default_cases(steps: int = 30) -> list[Case]:
    return [pretrain_case(2, steps=steps), pretrain_case(3, steps=steps), finetune_case(steps=steps),
            segment_case(steps=steps)]


@dataclass
class Step:
    """One training step's loss and gradients (float64, on the CPU)."""

    loss: float
    grads: dict[str, torch.Tensor]

    @property
    def grad_norm(self) -> float:
        return math.sqrt(sum(float(g.pow(2).sum()) for g in self.grads.values()))


@contextmanager
def no_tf32() -> Iterator[None]:
    """Plain fp32 matmuls and convolutions on CUDA (TF32 keeps 10 mantissa bits)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def train_step(model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device | str,
               dtype: torch.dtype | None) -> Step:
    """One ``training_step`` + backward of ``model`` on ``device`` as ``fit`` does it (fp16: scaled,
    then unscaled; an overflowing scale is halved and the step redone, as the scaler would)."""
    device = torch.device(device)
    model.to(device).train()
    batch = {k: v.to(device) for k, v in batch.items()}
    scaler = grad_scaler(device, dtype)
    params = [p for p in model.parameters() if p.requires_grad]
    holder = torch.optim.SGD(params, lr=0.0)  # only for the scaler's unscale_
    for _ in range(20):
        if isinstance(getattr(model, "augment", None), Replay):
            model.augment.calls = 0
        model.zero_grad(set_to_none=True)
        seed_everything(2)
        with no_tf32():
            with autocast(device, dtype):
                loss = model.training_step(batch)["loss"]
            if scaler is None:
                loss.backward()
                break
            scaler.scale(loss).backward()
            scaler.unscale_(holder)
        if all(torch.isfinite(p.grad).all() for p in params if p.grad is not None):
            break
        scaler.update()  # inf/NaN found: a smaller scale, as fit's next step would use
    grads = {n: p.grad.detach().double().cpu() for n, p in model.named_parameters() if p.grad is not None}
    return Step(float(loss.detach().float()), grads)


@dataclass
class Parity:
    """The comparison of a step with the CPU fp32 reference step."""

    case: str
    mode: str
    tol: Tolerance
    loss: tuple[float, float]  # (reference, checked)
    grad_norm: tuple[float, float]
    direction: float
    worst: tuple[str, float]  # (parameter, error)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def _rel(ref: float, got: float) -> float:
    if math.isnan(ref) or math.isnan(got):
        return math.inf
    return abs(got - ref) / max(abs(ref), 1e-12)


def compare(ref: Step, got: Step, tol: Tolerance, case: str = "", mode: str = "") -> Parity:
    """Loss, global gradient norm and per-tensor errors of ``got`` against ``ref``."""
    failures = []
    if ref.grads.keys() != got.grads.keys():
        missing = sorted(ref.grads.keys() ^ got.grads.keys())
        failures.append(f"gradients of different parameters (e.g. '{missing[0]}')")
    scale = max((float(g.abs().max()) for g in ref.grads.values() if g.numel()), default=0.0)
    worst, diff = ("", 0.0), 0.0
    for name in sorted(ref.grads.keys() & got.grads.keys()):
        r, g = ref.grads[name], got.grads[name]
        diff += float((g - r).pow(2).sum())
        err = float((g - r).abs().max()) / max(float(r.abs().max()), FLOOR * scale, 1e-30)
        if not math.isfinite(err) or err > worst[1]:
            worst = (name, err if math.isfinite(err) else math.inf)
    if _rel(ref.loss, got.loss) > tol.loss:
        failures.append(f"loss {got.loss:.6g} vs {ref.loss:.6g}")
    if _rel(ref.grad_norm, got.grad_norm) > tol.grad_norm:
        failures.append(f"gradient norm {got.grad_norm:.6g} vs {ref.grad_norm:.6g}")
    direction = math.sqrt(diff) / max(ref.grad_norm, 1e-30) if math.isfinite(diff) else math.inf
    if not direction <= tol.direction:
        failures.append(f"gradient off by {direction:.3g} of its norm")
    if tol.tensor is not None and worst[1] > tol.tensor:
        failures.append(f"gradient of '{worst[0]}' off by {worst[1]:.3g} of its scale")
    return Parity(case, mode, tol, (ref.loss, got.loss), (ref.grad_norm, got.grad_norm), direction,
                  worst, failures)


def prepare(case: Case) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The model of ``case`` made deterministic, and its CPU batch of ``parity_batch`` images."""
    model, n = case.build(), case.parity_batch
    labels = case.labels[:n] if case.labels is not None else None
    return model, case.fixed(model, case.images[:n], labels)


def reference_step(case: Case) -> Step:
    """The CPU fp32 step of ``case``: what every device and precision is compared with."""
    return train_step(*prepare(case), "cpu", None)


def check_parity(case: Case, device: torch.device | str, dtype: torch.dtype | None, *,
                 reference: Step | None = None,
                 perturb: Callable[[nn.Module], None] | None = None) -> Parity:
    """One step of ``case`` on ``device`` under ``dtype`` (None: fp32) against ``reference`` (the
    CPU fp32 step; computed when None). ``perturb`` alters the checked model only (for tests)."""
    reference = reference or reference_step(case)
    model, batch = prepare(case)
    if perturb is not None:
        perturb(model)
    step = train_step(model, batch, device, dtype)
    mode = f"{torch.device(device).type} {_name(dtype)}"
    return compare(reference, step, FP32 if dtype is None else AUTOCAST, case.name, mode)


def _name(dtype: torch.dtype | None) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def throughput(case: Case, device: torch.device, dtype: torch.dtype | None,
               warmup: int = 3, compile: bool = False) -> tuple[float, float]:
    """(images/s, peak GPU memory in MiB) of ``fit`` on ``case`` (after ``warmup`` steps, which
    include the compilation under ``compile``)."""
    model = case.build()
    spatial = case.images.dim() - 2
    channels_last = resolve_channels_last(None, dtype) and spatial == 2
    spec = PretrainConfig(epochs=1, batch_size=case.batch_size, lr=1e-4, warmup_epochs=0)
    warm = TensorBatches(case.images[:case.batch_size * warmup],
                         None if case.labels is None else case.labels[:case.batch_size * warmup],
                         case.batch_size, 0, device=device, channels_last=channels_last)
    fit(model, warm, spec, None, device=device, precision=dtype, channels_last=channels_last,
        compile=compile)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    data = TensorBatches(case.images, case.labels, case.batch_size, 1, device=device,
                         channels_last=channels_last)
    result = fit(model, data, spec, None, device=device, precision=dtype, channels_last=channels_last)
    return result.images_per_second, torch.cuda.max_memory_allocated(device) / 2**20


def study(device: str) -> tuple[bool, str]:
    """A tiny ``medssl study`` on BreastMNIST on ``device``: (ok, one-line note)."""
    data = os.environ.get("MEDSSL_DATA_DIR")
    if not data or not (Path(data) / "breastmnist" / "breastmnist.npz").is_file():
        return True, "skipped: $MEDSSL_DATA_DIR has no breastmnist/breastmnist.npz"
    with tempfile.TemporaryDirectory() as out:
        sets = [f"output_dir={out}", "name=gpu_check", f"engine.device={device}", "model.width=0.25",
                "pretrain.epochs=2", "finetune.epochs=2", "finetune.min_steps=0",
                "finetune.fractions=[1.0]", "finetune.seeds=[0]"]
        cmd = [sys.executable, "-m", "medssl", "study", "configs/demo.yaml"]
        cmd += [a for s in sets for a in ("--set", s)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        results = Path(out) / "gpu_check" / "results.jsonl"
        if proc.returncode != 0 or not results.is_file():
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            return False, f"failed (exit {proc.returncode}): {tail}"
        rows = [json.loads(line) for line in results.read_text().splitlines()]
        aucs = [r["auc"] for r in rows if "auc" in r]
        if not aucs or not all(math.isfinite(a) and 0 <= a <= 1 for a in aucs):
            return False, f"results.jsonl has no finite AUC in [0, 1]: {aucs}"
    return True, f"ok in {seconds:.0f} s, {len(aucs)} rows, AUC {min(aucs):.3f}-{max(aucs):.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="a CUDA device (default: cuda)")
    parser.add_argument("--steps", type=int, default=30, help="timed fit steps per case")
    parser.add_argument("--skip-study", action="store_true", help="skip the end-to-end study")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible (torch.cuda.is_available() is False); nothing checked")
        return 2
    device = torch.device(args.device)
    dtypes = [torch.bfloat16, torch.float16]
    notes = [f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"]
    if not native_bf16(device):  # torch.cuda.is_bf16_supported() also counts emulation (V100, T4)
        dtypes.remove(torch.bfloat16)
        notes.append("bf16 skipped: this GPU has no native bf16 (pre-Ampere)")
    rows, failed = [], []
    for case in default_cases(args.steps):
        ref = reference_step(case)
        for dtype in (None, *dtypes):
            parity = check_parity(case, device, dtype, reference=ref)
            ips, mem = throughput(case, device, dtype) if dtype is not None else (math.nan, math.nan)
            rows.append((parity, ips, mem))
            failed += [f"{case.name} {_name(dtype)}: {f}" for f in parity.failures]
            print(_row(parity, ips, mem), flush=True)
        parity = check_parity(case, device, dtypes[0], reference=ref, perturb=compile_parts)
        parity = replace(parity, mode=f"{parity.mode} compile")
        ips, mem = throughput(case, device, dtypes[0], compile=True)
        rows.append((parity, ips, mem))
        failed += [f"{case.name} {parity.mode}: {f}" for f in parity.failures]
        print(_row(parity, ips, mem), flush=True)
    ok, note = (True, "skipped (--skip-study)") if args.skip_study else study(str(device))
    if not ok:
        failed.append(f"study: {note}")
    print(_table(rows, [*notes, f"study on {device}: {note}"]))
    if failed:
        print("MISMATCH:\n  " + "\n  ".join(failed))
        return 1
    return 0


def _row(p: Parity, ips: float, mem: float) -> str:
    loss_err, norm_err = _rel(*p.loss), _rel(*p.grad_norm)
    speed = "" if math.isnan(ips) else f"{ips:9.0f} | {mem:8.0f}"
    return (f"| {p.case:10} | {p.mode:10} | {p.loss[1]:8.4f} | {loss_err:8.1e} | {norm_err:8.1e} | "
            f"{p.direction:8.1e} | {p.worst[1]:8.1e} | {'ok' if p.ok else 'MISMATCH':8} | "
            f"{speed or '        - |        -'} |")


def _table(rows: list[tuple[Parity, float, float]], notes: list[str]) -> str:
    head = ("| case       | mode       | loss     | loss err | norm err | dir err  | worst t. | parity   "
            "|     img/s | peak MiB |")
    rule = "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"
    return "\n".join(["", head, rule, *(_row(*r) for r in rows), "", *notes])


if __name__ == "__main__":
    sys.exit(main())
