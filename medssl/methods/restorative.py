"""The shared shape of the encoder-decoder restorative methods: corrupt -> U-Net -> restore.

Used by Models Genesis, context restoration and the denoising autoencoder. The U-Net's encoder
is the registered backbone itself (``self.backbone is self.net.backbone``), so the pretrained
encoder is the one a classifier or segmenter loads later; the decoder stays available as
``self.net.decoder`` / ``self.net.head`` for segmentation fine-tuning.
"""

from __future__ import annotations

import torch
from torch import nn

from medssl.errors import MedsslError
from medssl.losses import reconstruction_loss
from medssl.methods._common import GeneratorState, new_generator, save_shared_once
from medssl.models.unet import UNet
from medssl.transforms.augment import ViewAugment, random_crop
from medssl.transforms.corruptions import Corrupted


class RestorativeMethod(GeneratorState, nn.Module):
    """Restore the original from a corrupted input; subclasses define ``corrupt``.

    Args:
        backbone: a registered CNN backbone with ``stages`` (ResNets; not the ViT).
        augment: view augmentation, applied before corrupting if ``use_augment``.
        use_augment: augment first (the target is then the augmented image).
        loss: "mse" or "l1" between the sigmoid output and the original.
        crop: without augmentation, restore random ``augment.size``-sided crops of larger inputs
            (3D volumes) instead of whole ones (``random_crop``).
        decoder: "unet" (skip connections; its decoder can initialise a segmentation U-Net) or
            "plain" (decodes from the deepest stage only, so the encoder's output must hold the
            image: Chen et al. 2019's choice before classification; see ``UNet(skips=False)``).
    """

    name = "restorative"

    def __init__(self, backbone: nn.Module, augment: ViewAugment, use_augment: bool, loss: str,
                 crop: bool = True, decoder: str = "unet") -> None:
        super().__init__()
        if not hasattr(backbone, "stages"):
            raise MedsslError(f"{self.name} needs a CNN backbone with stages() for its U-Net decoder "
                              f"(e.g. resnet18_small); got {type(backbone).__name__}")
        if loss not in ("mse", "l1"):
            raise MedsslError(f"{self.name}: loss must be mse or l1, got '{loss}'")
        if decoder not in ("unet", "plain"):
            raise MedsslError(f"{self.name}: decoder must be unet or plain, got '{decoder}'")
        self.backbone = backbone
        self.net = UNet(backbone, backbone.in_channels, skips=decoder == "unet")
        self.augment = augment if use_augment else None
        self.crop = augment.size if crop else None
        self.loss_kind = loss
        self.generator = new_generator()
        save_shared_once(self)

    def corrupt(self, x: torch.Tensor) -> Corrupted:
        raise NotImplementedError

    def restore(self, corrupted: Corrupted) -> torch.Tensor:
        """[B, C, *S] restored image in [0, 1] (sigmoid output, as in Models Genesis)."""
        return torch.sigmoid(self.net(corrupted.input))

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["image"]
        x = self.augment(x) if self.augment is not None else random_crop(x, self.crop, self.generator)
        corrupted = self.corrupt(x)
        restored = self.restore(corrupted)
        return {"loss": reconstruction_loss(restored, corrupted.target, kind=self.loss_kind)}
