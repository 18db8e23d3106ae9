"""SimCLR pretraining throughput on this machine: fp32 vs bf16 autocast (+ channels_last).

Runs the real engine (``medssl.engine.fit``) on real BreastMNIST images and writes img/s per
(backbone, width, precision, memory format) to a JSON file. Not a unit test: numbers vary
±15-25% run to run on a shared 2-core CPU.

    python benchmarks/throughput.py --out benchmarks/results/throughput.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from medssl.config import PretrainConfig
from medssl.data.loaders import TensorBatches
from medssl.data.medmnist import load_medmnist
from medssl.engine import fit, seed_everything
from medssl.methods import create_method
from medssl.registry import create_backbone

CASES = [  # backbone, width, image size
    ("resnet18_small", 1.0, 28),
    ("resnet18_small", 0.5, 28),
    ("resnet18_small", 0.25, 28),
]
MODES = [("fp32", None, False), ("fp32+channels_last", None, True),
         ("bf16", torch.bfloat16, False), ("bf16+channels_last", torch.bfloat16, True)]


def measure(backbone: str, width: float, size: int, precision, channels_last: bool,
            images: torch.Tensor, steps: int, batch_size: int) -> float:
    seed_everything(0)
    net = create_backbone(backbone, 2, images.shape[1], width=width)
    model = create_method("simclr", net, 2, size, {})
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    spec = PretrainConfig(epochs=1, batch_size=batch_size, warmup_epochs=0)
    warm = TensorBatches(images[: batch_size * 2], None, batch_size, 0, channels_last=channels_last)
    fit(model, warm, spec, None, precision=precision, channels_last=channels_last)
    timed = TensorBatches(images[: batch_size * steps], None, batch_size, 1, channels_last=channels_last)
    return fit(model, timed, spec, None, precision=precision, channels_last=channels_last).images_per_second


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="benchmarks/results/throughput.json")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    images = load_medmnist("breastmnist").train.images
    rows = []
    for backbone, width, size in CASES:
        for mode, precision, cl in MODES:
            if precision is torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
                continue
            ips = measure(backbone, width, size, precision, cl, images, args.steps, args.batch_size)
            rows.append({"method": "simclr", "backbone": backbone, "width": width, "size": size,
                         "mode": mode, "batch_size": args.batch_size, "img_per_s": round(ips, 1)})
            print(json.dumps(rows[-1]), flush=True)
    out = {"machine": {"cpu_count": torch.get_num_threads(), "torch": torch.__version__,
                       "processor": platform.processor()},
           "date": time.strftime("%Y-%m-%d"), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
