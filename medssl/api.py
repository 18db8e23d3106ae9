"""The Python API: run a study, pretrain on your own images, load a pretrained encoder.

Re-exported lazily from ``medssl`` (``medssl.run_study``, ``medssl.pretrain``, ``medssl.load_encoder``,
``medssl.Encoder``), so ``import medssl`` stays fast. Every function checks its input like the CLI:
a bad key, value or file is a one-line :class:`~medssl.errors.MedsslError`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medssl.config import (
    ModelConfig,
    PretrainConfig,
    StudyConfig,
    apply_overrides,
    from_dict,
    load_config,
    save_config,
    to_dict,
)
from medssl.data.pool import folder_pool, resize_batch
from medssl.data.types import PretrainData
from medssl.errors import MedsslError

ENCODER_FILE = "encoder.safetensors"


def study_config(config: str | Path | dict[str, Any] | StudyConfig,
                 overrides: Sequence[str] = ()) -> StudyConfig:
    """A checked :class:`StudyConfig` from a YAML path, a nested dict or a StudyConfig.

    A dict (and a StudyConfig, via its dict) goes through the same checks as a YAML file: unknown
    keys, wrong types and values out of range are errors. ``overrides`` are ``"key=value"`` strings,
    as for ``--set``.
    """
    overrides = [overrides] if isinstance(overrides, str) else list(overrides)
    if isinstance(config, (str, Path)):
        return load_config(config, overrides)
    if isinstance(config, StudyConfig):
        data, source = to_dict(config), "StudyConfig"
    elif isinstance(config, dict):
        data, source = copy.deepcopy(config), "config dict"
    else:
        raise MedsslError(f"config must be a YAML path, a dict or a StudyConfig, got {type(config).__name__}")
    return from_dict(StudyConfig, apply_overrides(data, overrides), source)


def run_study(config: str | Path | dict[str, Any] | StudyConfig, *, overrides: Sequence[str] = (),
              overwrite: bool = False, resume: bool = False) -> Path:
    """Run a whole study (``medssl study``): pretrain once, then fine-tune every grid cell.

    Args:
        config: a study YAML, a nested dict with the YAML's keys, or a StudyConfig.
        overrides: ``"key=value"`` strings, e.g. ``["pretrain.epochs=5"]``.
        overwrite: replace an existing run directory.
        resume: continue ``<name>.incomplete`` (finished cells are kept), or add the cells of new
            ``finetune.seeds`` / ``finetune.fractions`` to a finished run.

    Returns:
        The finished run directory (``results.jsonl``, ``report.md``, ``pretrain/encoder.safetensors``).
    """
    from medssl.engine.dist import init_from_env
    from medssl.io import check_writable_dir
    from medssl.studies import run_study as run

    cfg = study_config(config, overrides)
    init_from_env(cfg.engine.device)  # under torchrun: one process per GPU
    check_writable_dir(Path(cfg.output_dir), "output_dir")
    return run(cfg, overwrite=overwrite, resume=resume)


@dataclass(frozen=True)
class EncoderConfig:
    """What rebuilds an encoder: the registered backbone, its width and the data's geometry."""

    backbone: str
    width: float
    spatial_dims: int
    in_channels: int
    size: int  # side length pretrained at (ViT position embeddings; CNNs take any size)
    method: str | None = None  # the pretext method, when known


class Encoder(nn.Module):
    """A pretrained medssl backbone as a plain ``nn.Module`` (returned in eval mode, on the CPU).

    Shapes (``x``: float ``[B, C, *S]`` in [0, 1], ``C = config.in_channels``, ``len(S) =
    config.spatial_dims``):

    - ``forward(x) -> [B, num_features]`` pooled features (ResNets: global average pool; ViT: CLS).
      With ``features_only=True`` (like timm's), ``forward`` returns ``stages(x)`` instead.
    - ``forward_features(x)``: ResNets ``[B, num_features, *S / stride]``; ViT tokens ``[B, 1 + N, D]``.
    - ``stages(x)``: CNNs only, the four stage outputs ``[B, feature_channels[i], *S_i]``, finest
      first: the skips of a U-Net/FPN decoder.

    Example::

        enc = medssl.load_encoder("runs/my-simclr")
        clf = nn.Sequential(enc, nn.Linear(enc.num_features, 2))   # a linear head
        seg = medssl.models.unet.UNet(enc, out_channels=3)         # medssl's U-Net decoder
        maps = medssl.load_encoder("runs/my-simclr", features_only=True)(x)  # list of 4 maps
    """

    def __init__(self, backbone: nn.Module, config: EncoderConfig, features_only: bool = False) -> None:
        super().__init__()
        if features_only and not hasattr(backbone, "stages"):
            raise MedsslError(f"{config.backbone} has no multi-scale stages; features_only needs a CNN "
                              "backbone (use forward_features for ViT tokens)")
        self.backbone = backbone
        self.config = config
        self.features_only = features_only
        self.spatial_dims = config.spatial_dims  # what medssl's UNet reads from an encoder
        self.in_channels = config.in_channels

    @property
    def num_features(self) -> int:
        return int(self.backbone.num_features)

    @property
    def feature_channels(self) -> list[int]:
        """Channels of ``stages(x)``, finest first (CNN backbones)."""
        if not hasattr(self.backbone, "feature_channels"):
            raise MedsslError(f"{self.config.backbone} has no multi-scale stages (a ViT)")
        return list(self.backbone.feature_channels)

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        if not hasattr(self.backbone, "stages"):
            raise MedsslError(f"{self.config.backbone} has no multi-scale stages; use forward_features")
        return self.backbone.stages(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        return self.stages(x) if self.features_only else self.backbone(x)

    def save(self, path: str | Path) -> Path:
        """Write the weights as an ``encoder.safetensors``-style file that carries its config, so
        ``load_encoder(path)`` needs nothing beside it (and a study's ``pretrain.checkpoint`` takes it)."""
        from medssl.engine.checkpoint import save_weights

        path = Path(path)
        meta = {"method": self.config.method or "", "backbone": self.config.backbone,
                "config": json.dumps(dataclasses.asdict(self.config))}
        save_weights(self.backbone, path, meta)
        return path


def load_encoder(path: str | Path, *, features_only: bool = False) -> Encoder:
    """Load a pretrained encoder from a run directory or an ``encoder.safetensors`` file.

    Args:
        path: a ``medssl pretrain`` / :func:`pretrain` directory, a study directory (its
            ``pretrain/encoder.safetensors``), or the file itself. The model config comes from the
            file's metadata (files written by :meth:`Encoder.save`) or from the run's ``config.yaml``
            (beside the file or one folder up); ``spatial_dims`` and ``in_channels`` from the weights.
        features_only: ``forward`` returns the list of stage feature maps (CNN backbones).
    """
    from medssl.engine.checkpoint import load_weights
    from medssl.studies import build_backbone

    file, cfg = _locate(Path(path))
    weights = load_weights(file)
    config = _encoder_config(file, weights, cfg)
    backbone = build_backbone(ModelConfig(config.backbone, config.width), config.spatial_dims,
                              config.in_channels, config.size)
    try:
        backbone.load_state_dict(weights)
    except RuntimeError as err:
        raise MedsslError(f"{file}: weights do not fit {config.backbone} at width {config.width:g} "
                          f"({str(err).splitlines()[0]})") from err
    return Encoder(backbone, config, features_only).eval()


def _locate(path: Path) -> tuple[Path, StudyConfig | None]:
    """(encoder file, the run's config or None) for a run directory, a study directory or a file."""
    if path.is_dir():
        cfg = load_config(path / "config.yaml") if (path / "config.yaml").is_file() else None
        for file in (path / ENCODER_FILE, path / "pretrain" / ENCODER_FILE):
            if file.is_file():
                return file, cfg
        if cfg is not None and cfg.pretrain.checkpoint:  # a study that evaluated a given encoder
            return Path(cfg.pretrain.checkpoint), cfg
        raise MedsslError(f"{path}: no {ENCODER_FILE} here or in {path / 'pretrain'}")
    if not path.is_file():
        raise MedsslError(f"{path}: encoder not found (a run directory or an {ENCODER_FILE} file)")
    for folder in (path.parent, path.parent.parent):
        if (folder / "config.yaml").is_file():
            return path, load_config(folder / "config.yaml")
    return path, None


def _encoder_config(file: Path, weights: dict[str, torch.Tensor], cfg: StudyConfig | None) -> EncoderConfig:
    from medssl.engine.checkpoint import weights_metadata

    meta = weights_metadata(file)
    if "config" in meta:
        return EncoderConfig(**json.loads(meta["config"]))
    if cfg is None:
        raise MedsslError(f"{file}: no model config in the file and no config.yaml beside it or one "
                          "folder up; pass the run directory")
    kernels = [k for k, v in weights.items() if v.ndim in (4, 5)]
    if not kernels:
        raise MedsslError(f"{file}: no convolution kernel to read the input geometry from")
    stem = weights[min(kernels, key=lambda k: (k.count("."), len(k)))]  # the first conv / patch embed
    return EncoderConfig(meta.get("backbone", cfg.model.backbone), cfg.model.width, stem.ndim - 2,
                         int(stem.shape[1]), cfg.data.size, meta.get("method", cfg.pretrain.method))


def pretrain(images: Any, *, method: str = "simclr", backbone: str = ModelConfig.backbone,
             width: float = ModelConfig.width, epochs: int = PretrainConfig.epochs,
             batch_size: int = PretrainConfig.batch_size, size: int | None = None,
             out: str | Path | None = None, overwrite: bool = False, resume: bool = False,
             device: str = "auto", precision: str = "auto", method_args: dict[str, Any] | None = None,
             seed: int = 0, storage: str = "auto", compile: bool = False, **pretrain_overrides: Any
             ) -> Encoder:
    """Pretrain an encoder on your own unlabelled images; return it (see :class:`Encoder`).

    Args:
        images: one of
            - a tensor or ndarray ``[N, C, H, W]`` (2D) or ``[N, C, D, H, W]`` (3D), channel first:
              uint8 (0-255), or floats in [0, 1], which are converted to uint8 (``round(x * 255)``;
              floats outside [0, 1] are an error: scale them first);
            - a folder of grey PNG/JPG/TIFF/BMP/DICOM images or NIfTI volumes (not mixed). NIfTI
              volumes are clipped to their 0.5-99.5 percentiles and min-max scaled, DICOM windowed
              (soft tissue); images keep their resolution and are centre-padded to the largest
              shape, or resized to ``size`` per side when ``size`` is given (read once, in
              DataLoader workers, into memory or a memory-mapped disk cache: see ``storage``);
            - a MedMNIST flag (``"breastmnist"``, ``"organmnist3d"``; ``size`` picks 28/64/128/224):
              its training images.
        method, method_args: the pretext method and its options (``medssl methods``).
        backbone, width: registered backbone (``medssl models``) and channel multiplier.
        epochs, batch_size, seed: as ``pretrain.*`` and ``seed`` in a study config.
        size: side of the pretraining views (default: the images' smallest side).
        out: run directory for ``encoder.safetensors``, ``config.yaml``, ``log.jsonl`` and the
            checkpoint; None: a temporary one, deleted on return (keep the result with ``.save``).
        overwrite, resume: replace ``out``, or continue it from its last checkpoint.
        device, precision: as ``engine.device`` / ``engine.precision`` (``"auto"``: CUDA, bf16...).
        compile: as ``engine.compile``: ``torch.compile`` the backbone and heads (a one-off compile,
            then faster steps where kernels fuse, mostly on GPUs).
        storage: for a folder, ``"memory"``, ``"disk"`` (a persistent memory-mapped cache under
            ``$MEDSSL_CACHE_DIR``, for data larger than RAM) or ``"auto"`` (disk above half the
            available memory); see ``medssl.data.cache``.
        **pretrain_overrides: other ``pretrain`` keys (``lr``, ``weight_decay``, ``warmup_epochs``,
            ``optimizer``, ``max_seconds``, ``snapshot_every``; ``select_on="val_knn"`` with a
            MedMNIST flag keeps the epoch with the best validation kNN AUC); unknown keys are errors.
    """
    from medssl.engine.dist import init_from_env, on_main
    from medssl.methods import method_config
    from medssl.studies import pretrain as run_pretrain
    from medssl.studies.pretraining import runtime

    pool, name = _pool(images, size, storage)
    cfg = from_dict(StudyConfig, {
        "name": name, "seed": seed, "data": {"dataset": name, "size": pool.size},
        "model": {"backbone": backbone, "width": width},
        "engine": {"device": device, "precision": precision, "compile": compile},
        "pretrain": {"method": method, "epochs": epochs, "batch_size": batch_size,
                     "method_args": dict(method_args or {}), **pretrain_overrides}}, "medssl.pretrain")
    method_config(cfg.pretrain.method, cfg.pretrain.method_args)
    runtime(cfg)
    if batch_size > len(pool):
        raise MedsslError(f"batch_size {batch_size} is larger than the {len(pool)} images")
    if init_from_env(device) and out is None:
        raise MedsslError("under torchrun pass out= (a run directory every rank sees)")
    if out is None:
        with tempfile.TemporaryDirectory(prefix="medssl-pretrain-") as tmp:
            run_pretrain(cfg, pool, Path(tmp))
            save_config(cfg, Path(tmp) / "config.yaml")
            return load_encoder(tmp)
    out = Path(out)

    def prepare() -> None:  # rank 0 alone touches the run directory
        if out.exists() and any(out.iterdir()) and not (overwrite or resume):
            raise MedsslError(f"{out}: run directory exists; pass overwrite=True, resume=True or another out")
        if overwrite and not resume and out.is_dir():
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")

    on_main(prepare)
    run_pretrain(cfg, pool, out, resume=resume)
    return load_encoder(out)


def _pool(images: Any, size: int | None, storage: str = "auto") -> tuple[PretrainData, str]:
    """The pretraining pool and a name for the run."""
    if isinstance(images, (str, Path)) and Path(images).is_dir():
        return folder_pool(Path(images), size, storage=storage), Path(images).name or "folder"
    if isinstance(images, Path) or (isinstance(images, str) and ("/" in images or "\\" in images)):
        raise MedsslError(f"{images}: folder not found")
    elif isinstance(images, str):
        from medssl.data.medmnist import load_medmnist

        data = load_medmnist(images, size or 28)  # an unknown flag: "unknown dataset ... (did you mean"
        return data.pretrain_data(), data.name
    else:
        x, name = _as_uint8(images), "tensor"
        if size is not None:
            x = resize_batch(x, size)
    return PretrainData(x, x.dim() - 2, int(x.shape[1]), size or min(x.shape[2:])), name


def _as_uint8(images: Any) -> torch.Tensor:
    """A uint8 ``[N, C, *S]`` CPU tensor from uint8 or [0, 1] float images."""
    if not isinstance(images, (torch.Tensor, np.ndarray)):
        raise MedsslError(f"images must be a tensor, an ndarray, a folder or a MedMNIST flag, "
                          f"got {type(images).__name__}")
    x = torch.as_tensor(images).detach().cpu()
    if x.dim() not in (4, 5) or x.shape[0] < 2:
        raise MedsslError(f"images must be [N, C, H, W] or [N, C, D, H, W] with N >= 2, got {list(x.shape)}")
    if x.dtype == torch.uint8:
        return x.contiguous()
    if not x.is_floating_point():
        raise MedsslError(f"images must be uint8 or floats in [0, 1], got {x.dtype}")
    if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise MedsslError(f"float images must be in [0, 1] (got {x.min().item():g} to {x.max().item():g}); "
                          "scale them first, or pass uint8")
    return torch.round(x.float() * 255).to(torch.uint8)
