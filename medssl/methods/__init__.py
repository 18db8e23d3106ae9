"""Pretext methods: an explicit name -> (module class, config dataclass) table."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from medssl.config import from_dict
from medssl.errors import MedsslError
from medssl.methods.barlow_twins import BarlowTwins, BarlowTwinsConfig
from medssl.methods.byol import BYOL, BYOLConfig
from medssl.methods.combo import Combo, ComboConfig
from medssl.methods.context_restoration import ContextRestoration, ContextRestorationConfig
from medssl.methods.denoising import Denoising, DenoisingConfig
from medssl.methods.dino import DINO, DINOConfig
from medssl.methods.distortion_dense import DistortionDense, DistortionDenseConfig
from medssl.methods.distortion_maskrcnn import DistortionMaskRCNN, DistortionMaskRCNNConfig
from medssl.methods.genesis import Genesis, GenesisConfig
from medssl.methods.jigsaw import Jigsaw, JigsawConfig
from medssl.methods.mae import MAE, MAEConfig
from medssl.methods.moco_v2 import MoCoV2, MoCoV2Config
from medssl.methods.moco_v3 import MoCoV3, MoCoV3Config
from medssl.methods.relative_location import RelativeLocation, RelativeLocationConfig
from medssl.methods.rotation import Rotation, RotationConfig
from medssl.methods.rubik import Rubik, RubikConfig
from medssl.methods.simclr import SimCLR, SimCLRConfig
from medssl.methods.simsiam import SimSiam, SimSiamConfig
from medssl.methods.vicreg import VICReg, VICRegConfig
from medssl.transforms.augment import ViewAugment

METHODS: dict[str, tuple[type[nn.Module], type]] = {
    "simclr": (SimCLR, SimCLRConfig),
    "moco_v2": (MoCoV2, MoCoV2Config),
    "moco_v3": (MoCoV3, MoCoV3Config),
    "byol": (BYOL, BYOLConfig),
    "simsiam": (SimSiam, SimSiamConfig),
    "barlow_twins": (BarlowTwins, BarlowTwinsConfig),
    "vicreg": (VICReg, VICRegConfig),
    "dino": (DINO, DINOConfig),
    "genesis": (Genesis, GenesisConfig),
    "context_restoration": (ContextRestoration, ContextRestorationConfig),
    "denoising": (Denoising, DenoisingConfig),
    "mae": (MAE, MAEConfig),
    "rotation": (Rotation, RotationConfig),
    "jigsaw": (Jigsaw, JigsawConfig),
    "relative_location": (RelativeLocation, RelativeLocationConfig),
    "rubik": (Rubik, RubikConfig),
    "combo": (Combo, ComboConfig),
    "distortion_dense": (DistortionDense, DistortionDenseConfig),
    "distortion_maskrcnn": (DistortionMaskRCNN, DistortionMaskRCNNConfig),
}


def method_config(name: str, args: dict[str, Any]) -> Any:
    """The method's config dataclass from ``pretrain.method_args`` (unknown keys are errors)."""
    name = canonical_name(name)
    if name not in METHODS:
        raise MedsslError(f"unknown method '{name}'; known: {', '.join(sorted(METHODS))}")
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
