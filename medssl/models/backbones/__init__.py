"""Registered backbones; importing this package fills the registry."""

from medssl.models.backbones import resnet, vit  # noqa: F401
