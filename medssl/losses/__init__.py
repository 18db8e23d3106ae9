"""Losses as pure functions of tensors, each tested against a naive reference."""

from medssl.losses.barlow_twins import barlow_twins_loss
from medssl.losses.byol import byol_loss, negative_cosine
from medssl.losses.dino import dino_loss, update_center
from medssl.losses.moco import moco_infonce, moco_v3_loss
from medssl.losses.nt_xent import nt_xent
from medssl.losses.reconstruction import masked_patch_loss, reconstruction_loss
from medssl.losses.vicreg import vicreg_loss

__all__ = ["barlow_twins_loss", "byol_loss", "dino_loss", "moco_infonce", "moco_v3_loss",
           "negative_cosine", "nt_xent", "update_center", "vicreg_loss"]
__all__ += ["masked_patch_loss", "reconstruction_loss"]
