"""Pretext methods: an explicit name -> (module class, config dataclass) table."""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

from torch import nn

from medssl.config import from_dict
from medssl.errors import MedsslError
from medssl.methods.combo import Combo, ComboConfig
from medssl.methods.table import SINGLE_METHODS
from medssl.transforms.augment import ViewAugment

METHODS: dict[str, tuple[type[nn.Module], type]] = {**SINGLE_METHODS, "combo": (Combo, ComboConfig)}


def method_config(name: str, args: dict[str, Any]) -> Any:
    """The method's config dataclass from ``pretrain.method_args`` (unknown keys are errors)."""
    name = canonical_name(name)
    if name not in METHODS:
        near = difflib.get_close_matches(name, METHODS, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise MedsslError(f"unknown method '{name}'{hint}; known: {', '.join(sorted(METHODS))}")
    return from_dict(METHODS[name][1], args, f"method '{name}'", "pretrain.method_args.")


def canonical_name(name: str) -> str:
    """Method names accept hyphens for underscores (``distortion-dense`` = ``distortion_dense``)."""
    return name.replace("-", "_")


def create_method(name: str, backbone: nn.Module, spatial_dims: int, size: int,
                  args: dict[str, Any]) -> nn.Module:
    """Build method ``name`` around ``backbone`` with its default view augmentation."""
    name = canonical_name(name)
    cls, _ = METHODS.get(name, (None, None))
    cfg = method_config(name, args)
    return cls(backbone, ViewAugment(spatial_dims, size), cfg)


def method_defaults(name: str) -> dict[str, Any]:
    return dataclasses.asdict(METHODS[name][1]())
