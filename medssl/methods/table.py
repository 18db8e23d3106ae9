"""The single pretext methods: an explicit name -> (module class, config dataclass) table.

``combo`` builds its tasks from this table; ``medssl.methods.METHODS`` adds ``combo`` itself.
"""

from __future__ import annotations

from torch import nn

from medssl.methods.barlow_twins import BarlowTwins, BarlowTwinsConfig
from medssl.methods.byol import BYOL, BYOLConfig
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

SINGLE_METHODS: dict[str, tuple[type[nn.Module], type]] = {
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
    "distortion_dense": (DistortionDense, DistortionDenseConfig),
    "distortion_maskrcnn": (DistortionMaskRCNN, DistortionMaskRCNNConfig),
}
