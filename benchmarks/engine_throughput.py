"""Demo pretraining and fine-tuning throughput of two source trees, alternating, in one run.

For the engine change (loader contract, devices) the brief asks that the in-memory path keep
>= 95% of the old throughput. Each tree runs in its own process (``python -S`` with the tree first
on ``sys.path``, so an editable install of the other tree cannot shadow it): ``medssl pretrain`` with
the demo config for ``--epochs`` epochs, and a scratch-only study that fine-tunes on 100% of the
labels; img/s is the last ``log.jsonl`` row's running average (the same first-step warm-up in both).

    python benchmarks/engine_throughput.py --old /path/to/old/tree --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import site
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NEW = Path(__file__).resolve().parents[1]


def run(tree: Path, argv: list[str]) -> None:
    code = (f"import sys; sys.path[:0] = [{str(tree)!r}, {site.getsitepackages()[0]!r}]; "
            f"from medssl.cli import main; sys.exit(main({argv!r}))")
    subprocess.run([sys.executable, "-S", "-c", code], cwd=tree, check=True, env=os.environ,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def last_ips(log: Path) -> float:
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    return [r["img_per_s"] for r in rows if "img_per_s" in r][-1]


def measure(tree: Path, epochs: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        run(tree, ["pretrain", "configs/demo.yaml", "--out", str(out / "p"),
                   "--set", f"pretrain.epochs={epochs}", "--set", "engine.log_every=1"])
        sets = [f"output_dir={out}", "name=f", "finetune.fractions=[1.0]", "finetune.seeds=[0]",
                "finetune.inits=[scratch]", "finetune.knn=false", f"finetune.epochs={epochs}",
                "finetune.min_steps=0", "engine.log_every=1"]
        run(tree, ["study", "configs/demo.yaml", *[a for s in sets for a in ("--set", s)]])
        return {"pretrain": last_ips(out / "p" / "log.jsonl"),
                "finetune": last_ips(out / "f" / "finetune" / "scratch_f1_s0" / "log.jsonl")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--old", required=True, help="the old source tree (e.g. a git worktree)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--out", default="benchmarks/results/engine_throughput.json")
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {"old": [], "new": []}
    for _ in range(args.repeats):
        for name, tree in (("old", Path(args.old)), ("new", NEW)):
            runs[name].append(measure(tree, args.epochs))
            print(name, runs[name][-1], flush=True)
    summary = {f"{name}_{k}": statistics.median(r[k] for r in rs) for name, rs in runs.items()
               for k in ("pretrain", "finetune")}
    for k in ("pretrain", "finetune"):
        summary[f"ratio_{k}"] = summary[f"new_{k}"] / summary[f"old_{k}"]
    out = {"date": time.strftime("%Y-%m-%d"), "old": str(args.old), "epochs": args.epochs,
           "note": "img/s, median over repeats, old and new alternating; demo config (SimCLR, resnet18_small "
                   "x0.5, BreastMNIST 28 px, bf16 + channels_last auto), fine-tuning on 100% labels, scratch",
           "runs": runs, "summary": summary}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
