"""Where a 3D segmentation fine-tuning step spends its time (the Hippocampus recipe).

    python benchmarks/seg3d_step.py                   # ~3 minutes on 2 CPU cores
    python benchmarks/seg3d_step.py --device cuda     # on a GPU

The Hippocampus study's fine-tuning step (``configs/hippocampus.yaml``: ``resnet18_small`` x0.25
U-Net, 3x3 stride-1 stem, batch 8, 32x48x32 patches cut from 48x64x48 cases, Dice-CE, AdamW) on
random data, through ``fit`` like the study: seconds per step in fp32 and under the autocast
precision, then ``torch.profiler``'s top operators (self time, forward and backward) of a few
bf16 steps. Writes ``results/seg3d_step.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from medssl.config import PretrainConfig
from medssl.data.loaders import TensorBatches
from medssl.engine import fit, resolve_device, resolve_precision, seed_everything
from medssl.engine.precision import autocast as autocast_ctx
from medssl.eval.segmentation import SegmentationNet
from medssl.models.unet import UNet
from medssl.registry import create_backbone

SHAPE, CROP, BATCH = (48, 64, 48), (32, 48, 32), 8


def new_net(width: float) -> SegmentationNet:
    seed_everything(0)
    backbone = create_backbone("resnet18_small", 3, 1, width=width)
    return SegmentationNet(UNet(backbone, 3), CROP)


def data(n: int, device: torch.device) -> TensorBatches:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, *SHAPE), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 3, (n, *SHAPE), dtype=torch.uint8, generator=g)
    return TensorBatches(images, labels, BATCH, 0, drop_last=True, device=device)


def seconds_per_step(width: float, precision: torch.dtype | None, device: torch.device, steps: int) -> float:
    net = new_net(width)
    spec = PretrainConfig(epochs=1, batch_size=BATCH, warmup_epochs=0, lr=2e-3)
    fit(net, data(BATCH * 2, device), spec, None, device=device, precision=precision,  # warm-up
        checkpoint=False)
    result = fit(net, data(BATCH * steps, device), spec, None, device=device, precision=precision,
                 checkpoint=False)
    return result.seconds / result.steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", default="benchmarks/results/seg3d_step.md")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    autocast = resolve_precision("auto", device)
    timings = {"fp32": seconds_per_step(args.width, None, device, args.steps)}
    if autocast is not None:
        name = str(autocast).removeprefix("torch.")
        timings[name] = seconds_per_step(args.width, autocast, device, args.steps)
    for name, s in timings.items():
        print(f"{name}: {s:.3f} s/step", flush=True)
    net = new_net(args.width).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    batches = data(BATCH * 3, device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for batch in batches.epoch(0):
            with autocast_ctx(device, autocast):
                loss = net.training_step(batch)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=25, max_name_column_width=48)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# 3D segmentation step profile ({time.strftime('%Y-%m-%d')}, {device}, "
             f"torch {torch.__version__}, {torch.get_num_threads()} threads)", "",
             f"`python benchmarks/seg3d_step.py --width {args.width:g} --steps {args.steps}`: "
             f"resnet18_small x{args.width:g} U-Net, batch {BATCH}, {CROP} patches from {SHAPE} cases, "
             "random data; seconds per optimizer step through `fit` (after 2 warm-up steps):", ""]
    lines += [f"- {name}: {s:.3f} s/step ({BATCH / s:.1f} patches/s)" for name, s in timings.items()]
    lines += ["", f"Top operators by self time over 3 steps ({autocast or 'fp32'}):", "", "```", table, "```"]
    out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
