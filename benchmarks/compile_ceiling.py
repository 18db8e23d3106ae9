"""How fast can SimCLR's model step go here? Variants of peer_lightly's model-only ceiling.

The ceiling of ``benchmarks/peer_lightly.py`` (ResNet-18 with a 3x3 stem, width 1.0, fp32, 28 px,
batch 128, medssl's projection MLP and ``nt_xent``, AdamW, one pre-made batch of views: no data
loading, no augmentation) ran at 29.1 img/s, below lightly's whole loop (33.4). This separates the
model-step choices that could explain it and asks whether ``torch.compile`` lifts the ceiling:

- ``concat``: one forward of both views concatenated (``[2B, 1, 28, 28]``), as medssl does;
- ``split``: one forward per view (``[B, ...]`` twice), as lightly's example does;
- ``+sgd``: SGD (lr 0.06, no momentum) instead of AdamW, as lightly's example does;
- ``+cl``: channels_last memory format;
- ``+bf16``: bf16 autocast with channels_last, medssl's default on this CPU (``engine.precision=auto``);
- ``+compile``: ``torch.compile`` (inductor, default mode) of the backbone and projector
  (``nn.Module.compile()``, in place); its compile time is reported apart from the timed steps.

Each variant runs in its own process (``sys.executable``), one after the other, ``--repeats`` times
in rotation; ``--steps`` timed steps after ``--warmup`` untimed ones (compilation happens there).
img/s counts images (not views). Writes ``--out`` (JSON) and the same name with ``.md``.

    MEDSSL_DATA_DIR=/work/shared/data python benchmarks/compile_ceiling.py \\
        --out benchmarks/results/compile_ceiling.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("concat", "split", "concat+sgd", "split+sgd", "concat+cl", "concat+compile",
            "split+compile", "split+cl", "split+cl+compile", "concat+bf16", "split+bf16",
            "split+bf16+compile")


def child(variant: str, args: argparse.Namespace) -> dict:
    """One variant's timed steps (runs in a child process)."""
    import numpy as np
    import torch

    from medssl.config import ModelConfig
    from medssl.data.medmnist import find_file
    from medssl.engine import autocast, seed_everything
    from medssl.losses import nt_xent
    from medssl.methods import create_method
    from medssl.studies.pretraining import build_backbone
    from medssl.transforms.augment import two_views

    seed_everything(0)
    backbone = build_backbone(ModelConfig(backbone="resnet18_small", width=args.width), 2, 1, 28)
    model = create_method("simclr", backbone, 2, 28, {"temperature": 0.2})
    path = find_file("breastmnist", 28)
    if path is None:
        raise SystemExit("breastmnist.npz not found: set MEDSSL_DATA_DIR to the folder that holds it")
    images = torch.from_numpy(np.load(path)["train_images"][: args.batch, None])
    views = two_views(model.augment, images.float() / 255)  # [2B, 1, 28, 28], made once
    if "+cl" in variant or "+bf16" in variant:
        model.to(memory_format=torch.channels_last)
        views = views.contiguous(memory_format=torch.channels_last)
    if "+sgd" in variant:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.06)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    if "+compile" in variant:
        model.backbone.compile()
        model.projector.compile()
    model.train()
    split = variant.startswith("split")

    precision = torch.bfloat16 if "+bf16" in variant else None

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with autocast(torch.device("cpu"), precision):
            if split:
                z = [model.projector(model.backbone(v)) for v in views.chunk(2)]
            else:
                z = model.projector(model.backbone(views)).chunk(2)
            loss = nt_xent(*z, 0.2)
        loss.backward()
        optimizer.step()
        return float(loss)

    t0 = time.perf_counter()
    for _ in range(args.warmup):
        step()
    warmup_s = time.perf_counter() - t0
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t)
    return {"variant": variant, "img_per_s": args.batch * len(times) / sum(times),
            "median_step_s": statistics.median(times), "warmup_s": warmup_s, "last_loss": loss,
            "threads": torch.get_num_threads()}


def run(variant: str, args: argparse.Namespace) -> dict:
    argv = [sys.executable, __file__, "--child", variant, "--width", str(args.width), "--batch",
            str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    out = subprocess.run(argv, capture_output=True, text=True)  # inherits MEDSSL_DATA_DIR
    if out.returncode:
        raise SystemExit(f"{variant}: exit status {out.returncode}\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_md(report: dict, path: Path) -> None:
    a = report["args"]
    base = report["summary"]["concat"]["median"]
    lines = ["# SimCLR model-step ceiling: concat vs split, AdamW vs SGD, channels_last, torch.compile",
             "", "(generated by benchmarks/compile_ceiling.py)", "",
             f"{report['date']}; {report['cpu']}; torch {report['torch']}. ResNet-18 (3x3 stem) width "
             f"{a['width']}, fp32 (+bf16: bf16 autocast, channels_last), 28 px, batch {a['batch']} images "
             f"(2 views each), medssl projector + nt_xent on one pre-made batch of views; {a['steps']} "
             f"timed steps after {a['warmup']} "
             f"untimed, {a['repeats']} repeat(s) per variant in rotation, each in its own process.", "",
             "| variant | img/s median (min-max) | vs concat | warm-up s (compile) |", "|---|---|---|---|"]
    for v, s in report["summary"].items():
        lines.append(f"| {v} | {s['median']:.1f} ({s['min']:.1f}-{s['max']:.1f}) | "
                     f"{s['median'] / base:.2f}x | {s['warmup_s']:.0f} |")
    lines += ["", "Lightly's whole loop ran at 33.4 img/s in fp32 at these settings "
              "(benchmarks/results/peer_lightly.md); the issue's target, 1.5x lightly, is ~50 img/s.", ""]
    path.write_text("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--child", choices=VARIANTS)
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("runs/compile_ceiling.json"))
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args)))
        return
    import torch

    runs = []
    for r in range(args.repeats):
        for v in args.variants:
            runs.append({**run(v, args), "repeat": r})
            print(f"{v} repeat {r}: {runs[-1]['img_per_s']:.1f} img/s", flush=True)
    summary = {}
    for v in args.variants:
        ips = [x["img_per_s"] for x in runs if x["variant"] == v]
        summary[v] = {"median": statistics.median(ips), "min": min(ips), "max": max(ips),
                      "warmup_s": statistics.median(x["warmup_s"] for x in runs if x["variant"] == v)}
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": platform.processor() or platform.machine(),
              "torch": torch.__version__, "args": {**vars(args), "out": str(args.out)}, "runs": runs,
              "summary": summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    write_md(report, args.out.with_suffix(".md"))
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
