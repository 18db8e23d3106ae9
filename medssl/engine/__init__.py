"""Training engine: one short loop for pretraining and fine-tuning."""

from medssl.engine.trainer import fit, resolve_channels_last, resolve_precision, seed_everything

__all__ = ["fit", "resolve_channels_last", "resolve_precision", "seed_everything"]
