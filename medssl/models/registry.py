"""Backbone registry (after timm's ``register_model`` / ``create_model``).

As in timm, the registry imports no model module: ``medssl.registry`` (the public entry point)
imports the built-in backbones, which register themselves here.

A backbone factory takes ``(spatial_dims, in_channels, **kwargs)`` and returns an ``nn.Module``
with ``num_features``, ``forward(x) -> [B, F]`` (pooled) and ``forward_features(x)``: a feature map
``[B, F, *spatial]`` for CNNs (which also give ``stages(x)`` for U-Net decoders), tokens
``[B, 1 + N, F]`` for ViTs.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

from torch import nn

from medssl.errors import MedsslError
from medssl.models.conv_guard import guard_convs

_BACKBONES: dict[str, Callable[..., nn.Module]] = {}


def register_backbone(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register a backbone factory under its function name."""
    if fn.__name__ in _BACKBONES:
        raise ValueError(f"backbone '{fn.__name__}' registered twice")
    _BACKBONES[fn.__name__] = fn
    return fn


def backbone_names() -> list[str]:
    return sorted(_BACKBONES)


def create_backbone(name: str, spatial_dims: int = 2, in_channels: int = 1, **kwargs) -> nn.Module:
    """Build registered backbone ``name`` for ``spatial_dims`` (2 or 3) and ``in_channels``.

    ``kwargs`` go to the factory: ``width`` (channel multiplier), ``img_size`` (input side length).
    """
    if name not in _BACKBONES:
        near = difflib.get_close_matches(name, _BACKBONES, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise MedsslError(f"unknown backbone '{name}'{hint}; known: {', '.join(backbone_names())}")
    if spatial_dims not in (2, 3):
        raise MedsslError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    # guarded again here so that a new backbone cannot miss oneDNN's tiny-input workaround
    return guard_convs(_BACKBONES[name](spatial_dims=spatial_dims, in_channels=in_channels, **kwargs))
