"""Helpers shared by the restorative, predictive and combined methods (plain functions, no base class)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def new_generator() -> torch.Generator:
    """A CPU generator for a method's corruptions, seeded from the global torch RNG.

    The engine seeds the global RNG per run, so the same config and seed give the same corruptions.
    """
    return torch.Generator().manual_seed(int(torch.randint(0, 2 ** 62, (1,))))


class GeneratorState:
    """Mixin: keep ``self.generator``'s state in the module's state dict (``_extra_state``), so a
    resumed run draws the same corruptions as an uninterrupted one (in one process: under torchrun
    each rank re-draws its generator from the restored streams)."""

    generator: torch.Generator

    def get_extra_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_extra_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


def save_shared_once(module: nn.Module) -> None:
    """Keep each shared tensor once in ``module.state_dict()`` (call at the end of ``__init__``).

    A method that reaches the backbone under two names (``backbone`` and ``net.backbone`` in a
    U-Net, or every task of a combination) would list its weights twice, and safetensors refuses
    to save tensors that share memory. The first name wins (register ``self.backbone`` first);
    loading copies the canonical entries back to the aliases, so strict loading still works.
    """
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, tensor in module.state_dict(keep_vars=True).items():
        if id(tensor) in first:
            aliases[name] = first[id(tensor)]
        else:
            first[id(tensor)] = name

    def drop(_module: nn.Module, state: dict, prefix: str, _meta: dict) -> None:
        for alias in aliases:
            state.pop(prefix + alias, None)

    def restore(_module: nn.Module, state: dict, prefix: str, *_args) -> None:
        for alias, canonical in aliases.items():
            if prefix + canonical in state:
                state[prefix + alias] = state[prefix + canonical]

    module.register_state_dict_post_hook(drop)
    module.register_load_state_dict_pre_hook(restore)


def classification_logs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy in fp32, accuracy) for logits [B, K] and labels [B]."""
    loss = F.cross_entropy(logits.float(), labels)
    return loss, (logits.detach().argmax(dim=1) == labels).float().mean()
