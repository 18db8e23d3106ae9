"""Public entry point of the backbone registry: importing it registers the built-in backbones."""

import medssl.models.backbones  # noqa: F401  (registers resnet*, vit_*)
from medssl.models.registry import backbone_names, create_backbone, register_backbone

__all__ = ["backbone_names", "create_backbone", "register_backbone"]
