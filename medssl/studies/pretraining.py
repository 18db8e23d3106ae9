"""Pretraining once per study, and the one place a backbone is built from ``cfg.model``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from medssl.config import ModelConfig, StudyConfig
from medssl.data.loaders import TensorBatches
from medssl.data.types import PretrainData
from medssl.engine import fit, resolve_channels_last, resolve_device, resolve_precision, seed_everything
from medssl.engine.checkpoint import save_weights
from medssl.engine.compute import count_params, flops_per_sample, peak_memory_mb
from medssl.engine.dist import barrier, is_main
from medssl.methods import create_method
from medssl.registry import create_backbone

console = Console(stderr=True)


def method_label(cfg: StudyConfig) -> str:
    """The method's name in results: a combination is named by its tasks (``genesis+simclr``)."""
    if cfg.pretrain.method == "combo" and cfg.pretrain.method_args.get("weights"):
        return "+".join(cfg.pretrain.method_args["weights"])
    return cfg.pretrain.method


def build_backbone(model: ModelConfig, spatial_dims: int, in_channels: int, size: int) -> torch.nn.Module:
    """The registered backbone ``model.backbone`` at ``model.width`` for this data's geometry."""
    return create_backbone(model.backbone, spatial_dims, in_channels, width=model.width, img_size=size)


def runtime(cfg: StudyConfig) -> tuple[torch.device, torch.dtype | None]:
    """(device, autocast dtype or None for fp32) from ``cfg.engine``."""
    device = resolve_device(cfg.engine.device)
    return device, resolve_precision(cfg.engine.precision, device)


def pretrain(cfg: StudyConfig, data: PretrainData, run_dir: Path, resume: bool = False) -> dict[str, Any]:
    """Pretrain the encoder on ``data.images``; save ``run_dir/encoder.safetensors``.

    ``resume`` continues from ``run_dir/checkpoint.safetensors`` exactly (see ``medssl.engine.fit``).
    ``pretrain.snapshot_every`` N also saves ``run_dir/snapshots/encoder_epochNNNN.safetensors``
    after every N-th epoch.
    Returns the row fields: steps, seconds, img_per_s, last_loss, pool (images pretrained on).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    backbone = build_backbone(cfg.model, data.spatial_dims, data.in_channels, data.size)
    model = create_method(cfg.pretrain.method, backbone, data.spatial_dims, data.size,
                          cfg.pretrain.method_args)
    device, precision = runtime(cfg)
    channels_last = resolve_channels_last(cfg.engine.channels_last, precision) and data.spatial_dims == 2
    batches = TensorBatches(data.images, None, cfg.pretrain.batch_size, cfg.seed, drop_last=True,
                            device=device, channels_last=channels_last)
    config = {"backbone": cfg.model.backbone, "width": cfg.model.width, "spatial_dims": data.spatial_dims,
              "in_channels": data.in_channels, "size": data.size, "method": cfg.pretrain.method}
    # the file rebuilds its encoder alone (``medssl.load_encoder``): no config.yaml needed beside it
    meta = {"method": cfg.pretrain.method, "backbone": cfg.model.backbone, "config": json.dumps(config)}
    every = cfg.pretrain.snapshot_every

    def snapshot(epoch: int) -> dict[str, Any]:
        if every and (epoch + 1) % every == 0 and is_main():
            save_weights(backbone, run_dir / "snapshots" / f"encoder_epoch{epoch + 1:04d}.safetensors", meta)
        return {}

    result = fit(model, batches, cfg.pretrain, run_dir, device=device, precision=precision,
                 channels_last=channels_last, log_every=cfg.engine.log_every,
                 desc=f"pretrain {cfg.pretrain.method}", resume=resume,
                 checkpoint_every=cfg.engine.checkpoint_every,
                 checkpoint_steps=cfg.engine.checkpoint_steps, max_seconds=cfg.pretrain.max_seconds,
                 accumulate=cfg.engine.accumulate, sync_bn=cfg.engine.sync_batchnorm,
                 tracking=cfg.engine.tracking, on_epoch_end=snapshot if every else None,
                 compile=cfg.engine.compile)
    if is_main():  # under torchrun every rank holds the same weights; rank 0 writes them
        save_weights(backbone, run_dir / "encoder.safetensors", meta)
        console.log(f"pretrained {cfg.pretrain.method}: {result.steps} steps in {result.seconds:.0f} s "
                    f"({result.images_per_second:.0f} img/s), last loss {result.last_loss:.4f}")
    barrier()
    sample = data.images[:1].to(device).float() / 255
    return {"steps": result.steps, "seconds": result.seconds, "img_per_s": result.images_per_second,
            "last_loss": result.last_loss, "pool": len(data), "params": count_params(backbone),
            "pretext_params": count_params(model), "flops_per_sample": flops_per_sample(backbone, sample),
            "peak_mem_mb": round(peak_memory_mb(device), 1)}
