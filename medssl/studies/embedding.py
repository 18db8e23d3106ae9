"""Data for the report's feature embedding: a 2D PCA of the test features of the pretrained encoder
and of the same backbone at random initialisation (``embedding.npz`` in a study directory).

The report reads results only; this is where the encoder is loaded (the studies layer may).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.decomposition import PCA

from medssl.config import load_config
from medssl.engine import seed_everything
from medssl.engine.checkpoint import load_weights
from medssl.eval.probes import extract_features
from medssl.io import atomic_write
from medssl.studies.pretraining import build_backbone, pretrain_seed, runtime

MAX_POINTS = 2000


def write_embedding(study_dir: Path) -> Path | None:
    """``study_dir/embedding.npz`` (``<method>_xy``, ``random-init_xy`` [N, 2], ``labels`` [N], ``names``)
    for a finished classification study with a pretrained encoder; None when there is nothing to embed."""
    encoder = study_dir / "pretrain" / "encoder.safetensors"
    out = study_dir / "embedding.npz"
    if out.is_file() or not encoder.is_file() or not (study_dir / "config.yaml").is_file():
        return out if out.is_file() else None
    cfg = load_config(study_dir / "config.yaml")
    if cfg.task != "classification":
        return None
    from medssl.studies.classification import ClassificationTask

    data = ClassificationTask().load(cfg)
    if data.multi_label:
        return None
    device, precision = runtime(cfg)
    pick = np.linspace(0, len(data.test) - 1, min(MAX_POINTS, len(data.test))).round().astype(int)
    images, labels = data.test.images[pick], data.test.labels.numpy()[pick]
    arrays = {"labels": labels, "names": np.array(data.class_names)}
    for name, weights in ((cfg.pretrain.method, load_weights(encoder)), ("random-init", None)):
        seed_everything(pretrain_seed(cfg))  # random-init: the pretrained encoder's starting point
        backbone = build_backbone(cfg.model, data.spatial_dims, data.in_channels, data.size)
        if weights is not None:
            backbone.load_state_dict(weights)
        feats = extract_features(backbone.to(device), images, precision=precision)
        arrays[f"{name}_xy"] = PCA(2, random_state=0).fit_transform(feats).astype(np.float32)
    del backbone
    if device.type == "cuda":
        torch.cuda.empty_cache()

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)

    atomic_write(out, write)
    return out


def study_dirs(run_dir: Path) -> list[Path]:
    """The study directories of a run: the run itself, or a grid's ``<dataset>_<method>`` folders."""
    subs = sorted(p for p in run_dir.iterdir() if p.is_dir() and (p / "config.yaml").is_file()
                  and (p / "results.jsonl").is_file())
    return subs or [run_dir]
