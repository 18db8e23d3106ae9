"""Losses as pure functions of tensors, each tested against a naive reference."""

from medssl.losses.nt_xent import nt_xent

__all__ = ["nt_xent"]
