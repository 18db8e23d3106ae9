"""Training engine: one short loop for pretraining and fine-tuning, on any device."""

from medssl.engine.precision import (
    autocast,
    precision_name,
    resolve_channels_last,
    resolve_device,
    resolve_precision,
)
from medssl.engine.trainer import TrainStep, compile_parts, fit, seed_everything, unwrap

__all__ = ["TrainStep", "autocast", "compile_parts", "fit", "precision_name", "resolve_channels_last",
           "resolve_device", "resolve_precision", "seed_everything", "unwrap"]
