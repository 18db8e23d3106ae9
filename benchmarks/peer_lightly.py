"""Peer race: lightly's documented SimCLR loop against ``medssl pretrain --method simclr``.

Same data (BreastMNIST training split, 546 images, 28 px, 1 channel), same backbone (medssl's
``resnet18_small`` from ``medssl.studies.pretraining.build_backbone``, ``--width``, default 1.0), same
batch and epochs, fp32 on the CPU; lightly, medssl, ceiling, lightly, medssl, ceiling, ... over
``--repeats`` repeats (seed = repeat index), each contender in its own process (``sys.executable``).

- **lightly** (``lightly``, ``pip install -e '.[bench]'``): the loop of lightly's
  ``examples/pytorch/simclr.py``: ``SimCLRTransform`` -> a torch ``Dataset`` of PIL images ->
  ``DataLoader(shuffle, drop_last, num_workers)`` -> ``model(x0)``, ``model(x1)`` ->
  ``NTXentLoss()`` (temperature 0.5) -> ``SGD(lr=0.06)``; head ``SimCLRProjectionHead(F, F, 128)``.
  The transform as lightly recommends for small images (its CIFAR-10 benchmarks): ``input_size=28,
  cj_strength=0.5, gaussian_blur=0.0`` (no blur at 28 px) and ``normalize=None``, so the encoder
  sees [0, 1] inputs like medssl's and the kNN protocol below feeds both the same. On PIL mode "L"
  images the transform keeps one channel: saturation and hue jitter and ``RandomGrayscale`` are
  no-ops on a grey image; crop, flip, brightness and contrast act.
  DataLoader workers: ``--lightly-workers``, default 0, measured on this shared 2-core machine
  (width 1.0, batch 128, 2 epochs = 8 steps; img/s, data wait, peak PSS of the tree): 0 workers
  8.8, 0.6%, 2.0 GB; 1 worker 8.5, 0.4%, 3.2 GB; 2 workers 8.4, 0.8%, 3.2 GB (load average 1.6-6
  from another user: the differences are within noise). Augmenting 546 images twice takes 1.6 s on
  one core, under 1% of an epoch's compute at width 1.0, so workers only take cores from the
  model's threads and each holds a forked copy of the process: 0 is not slower and uses the least
  memory. Workers, when asked for, are not persistent, as in the example.
- **medssl**: ``medssl pretrain configs/demo.yaml`` run through ``medssl.cli.main`` in a child
  process with ``--set data.path=<npz> pretrain.epochs pretrain.batch_size seed``, and in the
  default ``--recipe matched`` also ``model.width=<--width> engine.precision=fp32``
  (``engine.channels_last`` stays auto: off in fp32). Its optimizer, schedule and temperature are
  the demo's (AdamW 2e-3, 3 warm-up epochs, cosine; tau 0.2). ``--recipe medssl`` keeps the demo's
  width 0.5 and ``engine.precision=auto`` (bf16 autocast where the CPU has it): the question
  "does medssl reach lightly's kNN AUC in less time".
  The child wraps, without changing them, four medssl functions to measure from outside what the
  log does not show: ``TensorBatches.epoch`` (time blocked on the next batch), ``two_views`` (the
  augmentation, which medssl runs inside the training step on the main thread),
  ``engine.trainer._save_checkpoint`` (medssl's own checkpoints: their time is subtracted) and
  ``studies.pretraining.fit`` (adds an ``on_epoch_end`` that saves encoder snapshots).
- **ceiling**: the matched model (backbone + medssl's projection MLP + medssl's ``nt_xent``,
  AdamW) stepping on one pre-made batch of views (made once by medssl's augmentation): no
  augmentation, no data loading; ``--ceiling-steps`` timed steps after 3 untimed warm-up steps.
  With ``--recipe medssl`` a second ceiling in medssl's recipe (width, precision) is run too.

Per run: images/s (images, not views, per second of training; snapshot saving and medssl's
checkpoint writes excluded), data-wait share (time blocked on the next batch / training time),
data-prep share (that plus medssl's in-step augmentation), peak memory of the process tree
(DataLoader workers included) sampled from /proc every 0.2 s: the sum of VmRSS (counts pages that
forked workers share with their parent once per process) and the sum of Pss (shared pages split),
and ``ru_maxrss`` (largest single process, from ``wait4``), and the process's wall time. Pss is read
every 5 s only: ``smaps_rollup`` of a 2 GB process costs ~0.1 s of CPU, which every 0.2 s would take
a sixth of a core from the race.

kNN quality against training time: every ``--eval-every`` epochs (and after the last) each
contender saves its encoder (outside the timed part). The parent scores every snapshot with one
protocol: frozen fp32 features (``extract_features``) of the whole training split with its labels
as the bank, top-20 cosine-vote kNN (``knn_vote``, k=20) on the test split, AUC with class 0
(malignant) positive. Pretraining sees the training images only (no labels, no val/test images).

    . .venv/bin/activate && pip install -e '.[bench]'
    MEDSSL_DATA_DIR=/work/shared/data python benchmarks/peer_lightly.py              # all defaults
    MEDSSL_DATA_DIR=/work/shared/data python benchmarks/peer_lightly.py --recipe medssl \\
        --out benchmarks/results/peer_lightly_recipe.json
    MEDSSL_DATA_DIR=/work/shared/data python benchmarks/peer_lightly.py --quick      # smoke, ~2 min

Cost: at width 1.0 lightly ran at ~8.5 img/s here (shared machine), so one 100-epoch run takes
~1.5 hours and the default 3 repeats x 2 contenders ~9 hours (``--epochs``, ``--repeats``,
``--width`` to trade; ``--recipe medssl`` runs medssl at width 0.5 in bf16, much faster).
Writes ``--out`` (JSON) and the same name with ``.md``; ``--quick`` (1 epoch, 1 repeat, width 0.25,
3 ceiling steps) writes to ``runs/peer_lightly_quick/`` unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"
LIGHTLY_WORKERS = 0  # measured best here (module docstring)
SAMPLE_EVERY = 0.2  # seconds between RSS samples of a run's process tree
PSS_EVERY = 25  # RSS samples per Pss sample (5 s; smaps_rollup is expensive, module docstring)
KNN_K = 20
POSITIVE_CLASS = 0  # malignant


# ----------------------------------------------------------------------------- child processes


def _seed(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _snapshot_due(epoch: int, epochs: int, every: int) -> bool:
    """Save after epoch ``epoch`` (1-based) every ``every`` epochs and after the last."""
    return epoch % every == 0 or epoch == epochs


def _backbone(width: float):
    from medssl.config import ModelConfig
    from medssl.studies.pretraining import build_backbone

    return build_backbone(ModelConfig(backbone="resnet18_small", width=width), 2, 1, 28)


def child_lightly(spec: dict[str, Any]) -> dict[str, Any]:
    """lightly's SimCLR example loop on the BreastMNIST training images."""
    import numpy as np
    import torch
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms import SimCLRTransform
    from PIL import Image
    from torch import nn
    from torch.utils.data import DataLoader, Dataset

    from medssl.engine.checkpoint import save_weights

    _seed(spec["seed"])
    images = np.load(spec["data"])["train_images"]  # uint8 [N, 28, 28]

    class PILImages(Dataset):
        def __init__(self, arrays: np.ndarray, transform) -> None:
            self.arrays, self.transform = arrays, transform

        def __len__(self) -> int:
            return len(self.arrays)

        def __getitem__(self, i: int):
            return self.transform(Image.fromarray(self.arrays[i])), 0

    class SimCLR(nn.Module):
        def __init__(self, backbone: nn.Module) -> None:
            super().__init__()
            self.backbone = backbone
            f = backbone.num_features
            self.projection_head = SimCLRProjectionHead(f, f, 128)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.projection_head(self.backbone(x).flatten(start_dim=1))

    transform = SimCLRTransform(input_size=28, cj_strength=0.5, gaussian_blur=0.0, normalize=None)
    workers = spec["workers"]
    loader = DataLoader(PILImages(images, transform), batch_size=spec["batch"], shuffle=True,
                        drop_last=True, num_workers=workers)
    model = SimCLR(_backbone(spec["width"]))
    criterion = NTXentLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.06)
    snap_dir = Path(spec["snapshots"])
    snap_dir.mkdir(parents=True, exist_ok=True)
    snapshots, wait, excluded, steps, images_seen, loss = [], 0.0, 0.0, 0, 0, float("nan")
    model.train()
    t0 = time.perf_counter()
    for epoch in range(spec["epochs"]):
        tw = time.perf_counter()
        batches = iter(loader)  # starts the workers (not persistent, as in lightly's example)
        wait += time.perf_counter() - tw
        while True:
            tw = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                wait += time.perf_counter() - tw
                break
            wait += time.perf_counter() - tw
            x0, x1 = batch[0]
            z0 = model(x0)
            z1 = model(x1)
            loss_t = criterion(z0, z1)
            loss_t.backward()
            optimizer.step()
            optimizer.zero_grad()
            steps, images_seen = steps + 1, images_seen + len(x0)
        loss = float(loss_t.detach())
        if _snapshot_due(epoch + 1, spec["epochs"], spec["eval_every"]):
            ts = time.perf_counter()
            clock = ts - t0 - excluded
            path = snap_dir / f"epoch{epoch + 1:04d}.safetensors"
            save_weights(model.backbone, path)
            snapshots.append({"epoch": epoch + 1, "train_s": clock, "path": str(path)})
            excluded += time.perf_counter() - ts
            model.train()
    train_s = time.perf_counter() - t0 - excluded
    return {"steps": steps, "images": images_seen, "train_s": train_s, "wait_s": wait, "augment_s": 0.0,
            "excluded_s": excluded, "last_loss": loss, "snapshots": snapshots, "workers": workers,
            "img_per_s": images_seen / train_s}


def child_medssl(spec: dict[str, Any]) -> dict[str, Any]:
    """``medssl pretrain`` through its CLI entry point, with timing wrappers (module docstring)."""
    import medssl.data.loaders as loaders
    import medssl.engine.trainer as trainer
    import medssl.methods.simclr as simclr
    from medssl.cli import main as medssl_main
    from medssl.engine.checkpoint import save_weights
    from medssl.studies import pretraining as pretrain
    stats = {"wait_s": 0.0, "augment_s": 0.0, "excluded_s": 0.0, "checkpoint_s": 0.0}
    snapshots: list[dict[str, Any]] = []
    snap_dir = Path(spec["snapshots"])
    snap_dir.mkdir(parents=True, exist_ok=True)

    plain_epoch = loaders.TensorBatches.epoch

    def timed_epoch(self, epoch: int, start: int = 0):
        batches = plain_epoch(self, epoch, start)
        while True:
            t = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                stats["wait_s"] += time.perf_counter() - t
                return
            stats["wait_s"] += time.perf_counter() - t
            yield batch

    plain_two_views = simclr.two_views

    def timed_two_views(augment, x):
        t = time.perf_counter()
        out = plain_two_views(augment, x)
        stats["augment_s"] += time.perf_counter() - t
        return out

    plain_save = trainer._save_checkpoint

    def timed_save(*args, **kwargs):
        t = time.perf_counter()
        plain_save(*args, **kwargs)
        dt = time.perf_counter() - t
        stats["checkpoint_s"] += dt
        stats["excluded_s"] += dt

    plain_fit = pretrain.fit

    def fit(model, data, optim_spec, run_dir, **kwargs):
        t0 = time.perf_counter()

        def on_epoch_end(epoch: int) -> dict[str, Any]:
            if _snapshot_due(epoch + 1, spec["epochs"], spec["eval_every"]):
                ts = time.perf_counter()
                clock = ts - t0 - stats["excluded_s"]
                path = snap_dir / f"epoch{epoch + 1:04d}.safetensors"
                save_weights(model.backbone, path)
                snapshots.append({"epoch": epoch + 1, "train_s": clock, "path": str(path)})
                stats["excluded_s"] += time.perf_counter() - ts
            return {}

        result = plain_fit(model, data, optim_spec, run_dir, on_epoch_end=on_epoch_end, **kwargs)
        stats["train_s"] = time.perf_counter() - t0 - stats["excluded_s"]
        stats["steps"], stats["images"], stats["last_loss"] = result.steps, result.steps * data.batch_size, \
            result.last_loss
        stats["fit_img_per_s"] = result.images_per_second  # medssl's own figure (checkpoints included)
        return result

    loaders.TensorBatches.epoch = timed_epoch
    simclr.two_views = timed_two_views
    trainer._save_checkpoint = timed_save
    pretrain.fit = fit
    sets = [f"data.path={spec['data']}", f"pretrain.epochs={spec['epochs']}",
            f"pretrain.batch_size={spec['batch']}", f"seed={spec['seed']}", "engine.device=cpu"]
    if spec["recipe"] == "matched":
        sets += [f"model.width={spec['width']}", "engine.precision=fp32"]
    argv = ["pretrain", str(DEMO), "--method", "simclr", "--out", spec["run_dir"]]
    argv += [a for s in sets for a in ("--set", s)]
    code = medssl_main(argv)
    if code:
        raise SystemExit(code)
    log = [json.loads(x) for x in (Path(spec["run_dir"]) / "log.jsonl").read_text().splitlines()]
    ips = [r["img_per_s"] for r in log if "img_per_s" in r]
    return {**stats, "snapshots": snapshots, "argv": argv, "log_img_per_s": ips[-1] if ips else None,
            "img_per_s": stats["images"] / stats["train_s"]}


def child_ceiling(spec: dict[str, Any]) -> dict[str, Any]:
    """The model, head and loss stepping on pre-made views: what the hardware allows."""
    import numpy as np
    import torch

    from medssl.engine.precision import autocast, resolve_channels_last, resolve_precision
    from medssl.engine.trainer import make_optimizer
    from medssl.losses import nt_xent
    from medssl.methods import create_method
    from medssl.transforms.augment import two_views

    _seed(spec["seed"])
    device = torch.device("cpu")
    precision = resolve_precision(spec["precision"], device)
    channels_last = resolve_channels_last(None, precision)
    model = create_method("simclr", _backbone(spec["width"]), 2, 28, {"temperature": spec["temperature"]})
    images = torch.from_numpy(np.load(spec["data"])["train_images"][: spec["batch"], None])
    views = two_views(model.augment, images.float() / 255)  # [2B, 1, 28, 28], made once
    if channels_last:
        model.to(memory_format=torch.channels_last)
        views = views.contiguous(memory_format=torch.channels_last)
    optim = argparse.Namespace(optimizer="adamw", lr=spec["lr"], weight_decay=1e-4)
    optimizer = make_optimizer(model, optim)
    model.train()

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            z = model.projector(model.backbone(views))
            loss = nt_xent(*z.chunk(2), spec["temperature"])
        loss.backward()
        optimizer.step()
        return float(loss)

    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(spec["steps"]):
        loss = step()
    train_s = time.perf_counter() - t0
    images_seen = spec["steps"] * spec["batch"]
    return {"steps": spec["steps"], "images": images_seen, "train_s": train_s, "wait_s": 0.0,
            "augment_s": 0.0, "excluded_s": 0.0, "last_loss": loss, "snapshots": [],
            "img_per_s": images_seen / train_s, "precision": str(precision), "channels_last": channels_last}


CHILDREN = {"lightly": child_lightly, "medssl": child_medssl, "ceiling": child_ceiling}


# ----------------------------------------------------------------------------- parent: runs


def _tree(root: int) -> list[int]:
    """``root`` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def _kb(path: str, key: str) -> int:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except OSError:
        pass
    return 0  # gone, or a zombie


def _tree_memory(root: int, pss: bool) -> tuple[int, int, int]:
    """(sum of VmRSS, sum of Pss (0 unless ``pss``) in kB, processes) over ``root``'s process tree."""
    pids = _tree(root)
    rss = sum(_kb(f"/proc/{p}/status", "VmRSS:") for p in pids)
    pss_kb = sum(_kb(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids) if pss else 0
    return rss, pss_kb, len(pids)


def run_child(kind: str, spec: dict[str, Any], work: Path) -> dict[str, Any]:
    """Run one contender in its own process; its result plus wall time and peak memory."""
    spec_path, result_path, log_path = (work / f"{spec['tag']}.{s}"
                                        for s in ("spec.json", "result.json", "log"))
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", kind,
                                 str(spec_path), str(result_path)], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        peak = {"rss_kb": 0, "pss_kb": 0, "processes": 0}
        done = threading.Event()

        def sample() -> None:
            tick = 0
            while not done.is_set():
                rss, pss, n = _tree_memory(proc.pid, pss=tick % PSS_EVERY == 10)  # from 2 s on
                tick += 1
                peak["rss_kb"], peak["pss_kb"] = max(peak["rss_kb"], rss), max(peak["pss_kb"], pss)
                peak["processes"] = max(peak["processes"], n)
                done.wait(SAMPLE_EVERY)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        done.set()
        sampler.join()
    wall = time.perf_counter() - t0
    if proc.returncode:
        tail = "\n".join(log_path.read_text().splitlines()[-25:])
        raise SystemExit(f"{spec['tag']}: exit status {proc.returncode}\n{tail}")
    result = json.loads(result_path.read_text())
    step_s = result["train_s"]
    return {**result, "kind": kind, "tag": spec["tag"], "seed": spec["seed"], "width": spec["width"],
            "precision": spec.get("precision", "fp32"), "wall_s": wall, "loadavg_1min_before": load,
            "peak_rss_mb": peak["rss_kb"] / 1024, "peak_pss_mb": peak["pss_kb"] / 1024,
            "processes": peak["processes"], "ru_maxrss_mb": usage.ru_maxrss / 1024,
            "data_wait_share": result["wait_s"] / step_s,
            "data_prep_share": (result["wait_s"] + result["augment_s"]) / step_s}


# ----------------------------------------------------------------------------- parent: kNN


def knn_scores(runs: list[dict[str, Any]], data: Path) -> None:
    """Add ``auc`` to every snapshot of every run (one protocol for all; module docstring)."""
    import numpy as np
    import torch

    from medssl.engine.checkpoint import load_weights
    from medssl.eval.metrics import classification_metrics
    from medssl.eval.probes import extract_features, knn_vote

    arrays = np.load(data)
    train_x = torch.from_numpy(arrays["train_images"][:, None])
    test_x = torch.from_numpy(arrays["test_images"][:, None])
    train_y, test_y = arrays["train_labels"].ravel().astype(int), arrays["test_labels"].ravel().astype(int)
    for run in runs:
        for snap in run["snapshots"]:
            backbone = _backbone(run["width"])
            backbone.load_state_dict(load_weights(Path(snap["path"])))
            tr, te = extract_features(backbone, train_x), extract_features(backbone, test_x)
            probs = knn_vote(tr, train_y, te, 2, k=KNN_K)
            snap["auc"] = classification_metrics(test_y, probs, positive_class=POSITIVE_CLASS)["auc"]
            snap.pop("path")
        if run["snapshots"]:
            aucs = ", ".join(f"ep{s['epoch']} {s['auc']:.3f}" for s in run["snapshots"])
            print(f"  kNN {run['tag']}: {aucs}", flush=True)


# ----------------------------------------------------------------------------- report


def _spread(values: list[float], fmt: str = "{:.1f}") -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return fmt.format(values[0])
    lo, mid, hi = min(values), statistics.median(values), max(values)
    return f"{fmt.format(mid)} ({fmt.format(lo)}-{fmt.format(hi)})"


def medssl_name(index: int, epochs: int) -> str:
    """The i-th medssl contender's name: ``medssl``, then ``medssl_e<epochs>``."""
    return "medssl" if index == 0 else f"medssl_e{epochs}"


def _medssl_names(names: Any) -> list[str]:
    return sorted((n for n in names if n.startswith("medssl")), key=lambda n: (n != "medssl", n))


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(r["name"], []).append(r)
    summary: dict[str, Any] = {}
    for name, rs in groups.items():
        ips = [r["img_per_s"] for r in rs]
        summary[name] = {"runs": len(rs), "img_per_s_min": min(ips),
                         "img_per_s_median": statistics.median(ips), "img_per_s_max": max(ips),
                         "data_wait_share_median": statistics.median(r["data_wait_share"] for r in rs),
                         "data_prep_share_median": statistics.median(r["data_prep_share"] for r in rs),
                         "peak_rss_mb_median": statistics.median(r["peak_rss_mb"] for r in rs),
                         "peak_pss_mb_median": statistics.median(r["peak_pss_mb"] for r in rs),
                         "wall_s_median": statistics.median(r["wall_s"] for r in rs)}
        finals = [r["snapshots"][-1]["auc"] for r in rs if r["snapshots"]]
        if finals:
            summary[name]["final_knn_auc_median"] = statistics.median(finals)
    med = lambda n: summary[n]["img_per_s_median"] if n in summary else None  # noqa: E731
    if med("medssl") and med("lightly"):
        summary["ratio_medssl_over_lightly"] = med("medssl") / med("lightly")
        paired = [m["img_per_s"] / x["img_per_s"] for m, x in zip(groups["medssl"], groups["lightly"],
                                                                   strict=False)]
        summary["ratio_medssl_over_lightly_per_repeat"] = paired
    ceiling = "ceiling_medssl_recipe" if med("ceiling_medssl_recipe") else "ceiling"
    if med(ceiling):
        if med("medssl"):
            summary["ratio_medssl_over_its_ceiling"] = med("medssl") / med(ceiling)
        if med("lightly") and med("ceiling"):
            summary["ratio_lightly_over_ceiling"] = med("lightly") / med("ceiling")
    target = summary.get("lightly", {}).get("final_knn_auc_median")
    lightly_s = [r["snapshots"][-1]["train_s"] for r in groups.get("lightly", []) if r["snapshots"]]
    if target is not None and lightly_s:
        budget = statistics.median(lightly_s)
        reach: dict[str, Any] = {"target_auc": target, "lightly_final_train_s_median": budget}
        for name in _medssl_names(groups):
            hits = []
            for r in groups[name]:
                hit = next((s for s in r["snapshots"] if s["auc"] >= target), None)
                within = [s["auc"] for s in r["snapshots"] if s["train_s"] <= budget]
                first = None if hit is None else {"epoch": hit["epoch"], "train_s": hit["train_s"],
                                                  "share_of_lightly": hit["train_s"] / budget}
                hits.append({"hit": first, "best_auc_within_lightly_time": max(within, default=None)})
            reach[name] = hits
        summary["reach_lightly_final_auc"] = reach
    return summary


def write_markdown(out: dict[str, Any], path: Path) -> None:
    s, a, runs = out["summary"], out["settings"], out["runs"]
    names = [n for n in ("lightly", *_medssl_names(s), "ceiling", "ceiling_medssl_recipe") if n in s]
    lines = [
        "# lightly vs medssl: SimCLR on BreastMNIST (generated by benchmarks/peer_lightly.py)", "",
        f"{out['date']}; {out['machine']['cpu']} ({out['machine']['cpus']} CPUs, torch threads "
        f"{out['machine']['torch_threads']}); torch {out['versions']['torch']}, lightly "
        f"{out['versions']['lightly']}, Python {out['versions']['python']}.",
        f"Recipe `{a['recipe']}`: batch {a['batch']}, {a['epochs']} epochs (medssl "
        f"{', '.join(map(str, a['medssl_epochs']))}), "
        f"lightly width {a['width']} fp32 with {a['lightly_workers']} DataLoader worker(s), medssl "
        f"{a['medssl_desc']}; {a['repeats']} repeat(s), order lightly, medssl, ceiling per repeat, "
        f"seed = repeat index." + (" **--quick smoke run: numbers mean nothing.**" if a["quick"] else ""), "",
        "## Throughput", "",
        "img/s = training images (not views) per second of training (snapshot and checkpoint writes "
        "excluded); cells are median (min-max) over the runs. data wait = time blocked on the next batch "
        "/ training time; data prep = that plus medssl's augmentation inside the step. Peak memory of "
        "the process tree (workers included): RSS summed over processes every 0.2 s (shared pages counted "
        "per process) and PSS (shared pages split) every 5 s.", "",
        "| contender | runs | img/s | data wait | data prep | peak RSS MB | peak PSS MB | wall s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for n in names:
        rs = [r for r in runs if r["name"] == n]
        lines.append(f"| {n} | {len(rs)} | {_spread([r['img_per_s'] for r in rs])} | "
                     f"{_spread([100 * r['data_wait_share'] for r in rs], '{:.1f}%')} | "
                     f"{_spread([100 * r['data_prep_share'] for r in rs], '{:.1f}%')} | "
                     f"{_spread([r['peak_rss_mb'] for r in rs], '{:.0f}')} | "
                     f"{_spread([r['peak_pss_mb'] for r in rs], '{:.0f}')} | "
                     f"{_spread([r['wall_s'] for r in rs])} |")
    lines.append("")
    for key, label in (("ratio_medssl_over_lightly", "medssl / lightly (medians)"),
                       ("ratio_medssl_over_its_ceiling", "medssl / ceiling of its recipe (medians)"),
                       ("ratio_lightly_over_ceiling", "lightly / ceiling (medians)")):
        if key in s:
            lines.append(f"- {label}: {s[key]:.2f}")
    if "ratio_medssl_over_lightly_per_repeat" in s:
        lines.append("- medssl / lightly per repeat: "
                     + ", ".join(f"{x:.2f}" for x in s["ratio_medssl_over_lightly_per_repeat"]))
    lines += ["", "## kNN AUC against training time", "",
              "Each snapshot scored the same way: frozen fp32 features of all 546 training images (with "
              f"labels) as the bank, cosine-vote kNN (k={KNN_K}) on the 156 test images, AUC with class 0 "
              "(malignant) positive. Pretraining saw the training images only, without labels. Cells: median "
              "(min-max) over repeats of training seconds and AUC at that epoch.", "",
              "| contender | epoch | train s | kNN AUC |", "| --- | --- | --- | --- |"]
    for n in ("lightly", *_medssl_names({r["name"] for r in runs})):
        rs = [r for r in runs if r["name"] == n]
        for epoch in sorted({sn["epoch"] for r in rs for sn in r["snapshots"]}):
            snaps = [sn for r in rs for sn in r["snapshots"] if sn["epoch"] == epoch]
            lines.append(f"| {n} | {epoch} | {_spread([sn['train_s'] for sn in snaps])} | "
                         f"{_spread([sn['auc'] for sn in snaps], '{:.3f}')} |")
    reach = s.get("reach_lightly_final_auc")
    if reach:
        lines += ["", f"lightly's final kNN AUC (median over repeats) {reach['target_auc']:.3f}, reached "
                  f"by lightly after {reach['lightly_final_train_s_median']:.0f} s of training. Snapshots "
                  f"every {a['eval_every']} epochs, so the times below are upper bounds to that resolution.",
                  ""]
        for name in _medssl_names(reach):
            hits = ", ".join("not reached" if h["hit"] is None else
                             f"epoch {h['hit']['epoch']} at {h['hit']['train_s']:.0f} s "
                             f"({h['hit']['share_of_lightly']:.2f}x lightly's time)" for h in reach[name])
            best = ", ".join("-" if h["best_auc_within_lightly_time"] is None else
                             f"{h['best_auc_within_lightly_time']:.3f}" for h in reach[name])
            lines.append(f"- {name} reaches it (first snapshot at or above, per repeat): {hits}; its best "
                         f"kNN AUC within lightly's training time: {best}.")
    lines += ["", "Ranges cover run-to-run variation on a shared 2-core machine (another process may run; "
              "the 1-minute load average before each run is in the JSON) and, for kNN AUC, the seed "
              "(one per repeat); with 156 test images an AUC difference below ~0.05 is within noise."]
    path.write_text("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------- main


def machine() -> dict[str, Any]:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cpus": len(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "platform": platform.platform()}


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {"python": platform.python_version(), "torch": version("torch"),
            "torchvision": version("torchvision"), "lightly": version("lightly"), "numpy": version("numpy"),
            "pillow": version("pillow")}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", choices=("matched", "medssl"), default="matched",
                   help="matched: medssl at --width in fp32; medssl: the demo's width and precision")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--medssl-epochs", type=int, nargs="+",
                   help="medssl's epochs (default: --epochs); several values run several medssl "
                        "contenders per repeat, the first named medssl, the others medssl_e<epochs>")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--width", type=float, help="backbone width (default 1.0; 0.25 with --quick)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--eval-every", type=int, default=10, help="epochs between encoder snapshots")
    p.add_argument("--lightly-workers", type=int, default=LIGHTLY_WORKERS)
    p.add_argument("--ceiling-steps", type=int, default=30)
    p.add_argument("--data", help="breastmnist.npz (default: $MEDSSL_DATA_DIR/breastmnist/breastmnist.npz)")
    p.add_argument("--out", help="JSON path, the .md beside it (default: "
                   "benchmarks/results/peer_lightly.json)")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 epoch, 1 repeat, width 0.25")
    return p.parse_args()


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":  # a contender's own process
        kind, spec_path, result_path = sys.argv[2:]
        result = CHILDREN[kind](json.loads(Path(spec_path).read_text()))
        Path(result_path).write_text(json.dumps(result))
        return 0
    args = parse_args()
    if importlib.util.find_spec("lightly") is None:
        print("peer_lightly: lightly is not installed; run: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    if args.quick:
        args.epochs, args.repeats, args.eval_every, args.ceiling_steps = 1, 1, 1, 3
        args.medssl_epochs = [1]
    width = args.width if args.width is not None else (0.25 if args.quick else 1.0)
    medssl_epochs = args.medssl_epochs or [args.epochs]
    data = Path(args.data) if args.data else \
        Path(os.environ.get("MEDSSL_DATA_DIR", "")) / "breastmnist" / "breastmnist.npz"
    if not data.is_file():
        print(f"peer_lightly: {data} not found; set MEDSSL_DATA_DIR or pass --data", file=sys.stderr)
        return 2
    default_out = ROOT / ("runs/peer_lightly_quick" if args.quick else "benchmarks/results")
    default_out /= "peer_lightly.json"
    out_path = Path(args.out) if args.out else default_out
    out_path.parent.mkdir(parents=True, exist_ok=True)

    from medssl.config import load_config

    demo = load_config(DEMO)
    demo_args = {"lr": demo.pretrain.lr, "temperature": demo.pretrain.method_args.get("temperature", 0.1)}
    recipe_width = width if args.recipe == "matched" else demo.model.width
    recipe_precision = "fp32" if args.recipe == "matched" else demo.engine.precision
    ceilings = {"ceiling": (width, "fp32")}
    if args.recipe == "medssl":
        ceilings["ceiling_medssl_recipe"] = (recipe_width, recipe_precision)
    settings = {"recipe": args.recipe, "epochs": args.epochs, "medssl_epochs": medssl_epochs,
                "batch": args.batch, "width": width, "repeats": args.repeats, "eval_every": args.eval_every,
                "lightly_workers": args.lightly_workers, "ceiling_steps": args.ceiling_steps,
                "data": str(data),
                "quick": args.quick, "medssl_width": recipe_width, "medssl_precision": recipe_precision,
                "medssl_desc": f"width {recipe_width}, engine.precision={recipe_precision}, demo lr "
                               f"{demo_args['lr']:g} / tau {demo_args['temperature']:g}",
                "lightly_recipe": "SimCLRTransform(input_size=28, cj_strength=0.5, gaussian_blur=0.0, "
                                  "normalize=None), NTXentLoss() tau 0.5, SGD lr 0.06, "
                                  "SimCLRProjectionHead(F, F, 128)",
                "memory_sampling": f"/proc VmRSS summed over the process tree every {SAMPLE_EVERY} s, "
                                   f"Pss every {SAMPLE_EVERY * PSS_EVERY:g} s"}
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="peer_lightly_") as tmp:
        work = Path(tmp)
        for rep in range(args.repeats):
            common = {"seed": rep, "data": str(data), "batch": args.batch, "eval_every": args.eval_every}
            plan = [("lightly", "lightly", {"epochs": args.epochs, "width": width,
                                            "workers": args.lightly_workers}),
                    *((medssl_name(i, e), "medssl", {"epochs": e, "width": recipe_width,
                                                     "recipe": args.recipe, "precision": recipe_precision,
                                                     "run_dir": str(work / f"medssl{i}_r{rep}_run")})
                      for i, e in enumerate(medssl_epochs))]
            plan += [(name, "ceiling", {"width": w, "precision": prec, "steps": args.ceiling_steps,
                                        **demo_args}) for name, (w, prec) in ceilings.items()]
            for name, kind, extra in plan:
                tag = f"{name}_r{rep}"
                spec = {**common, **extra, "tag": tag, "snapshots": str(work / tag)}
                run = run_child(kind, spec, work)
                run["name"] = name
                runs.append(run)
                print(f"{tag}: {run['img_per_s']:.1f} img/s, wait {100 * run['data_wait_share']:.1f}%, "
                      f"prep {100 * run['data_prep_share']:.1f}%, peak RSS {run['peak_rss_mb']:.0f} MB "
                      f"(PSS {run['peak_pss_mb']:.0f}), wall {run['wall_s']:.1f} s", flush=True)
        knn_scores(runs, data)
    out = {"date": time.strftime("%Y-%m-%d %H:%M"), "settings": settings, "versions": versions(),
           "machine": machine(), "runs": runs, "summary": summarise(runs)}
    out_path.write_text(json.dumps(out, indent=2) + "\n")
    write_markdown(out, out_path.with_suffix(".md"))
    print(json.dumps(out["summary"], indent=2))
    print(f"wrote {out_path} and {out_path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
