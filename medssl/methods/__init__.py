"""Pretext methods: an explicit name -> (module class, config dataclass) table."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from medssl.config import from_dict
from medssl.errors import MedsslError
from medssl.methods.simclr import SimCLR, SimCLRConfig
from medssl.transforms.augment import ViewAugment

METHODS: dict[str, tuple[type[nn.Module], type]] = {
    "simclr": (SimCLR, SimCLRConfig),
}


def method_config(name: str, args: dict[str, Any]) -> Any:
    """The method's config dataclass from ``pretrain.method_args`` (unknown keys are errors)."""
    if name not in METHODS:
        raise MedsslError(f"unknown method '{name}'; known: {', '.join(sorted(METHODS))}")
    return from_dict(METHODS[name][1], args, f"method '{name}'", "pretrain.method_args.")


def create_method(name: str, backbone: nn.Module, spatial_dims: int, size: int,
                  args: dict[str, Any]) -> nn.Module:
    """Build method ``name`` around ``backbone`` with its default view augmentation."""
    cls, _ = METHODS.get(name, (None, None))
    cfg = method_config(name, args)
    return cls(backbone, ViewAugment(spatial_dims, size), cfg)


def method_defaults(name: str) -> dict[str, Any]:
    return dataclasses.asdict(METHODS[name][1]())
