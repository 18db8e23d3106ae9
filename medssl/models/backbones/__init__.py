"""Registered backbones; importing this package fills the registry."""

from medssl.models.backbones import resnet  # noqa: F401
