"""Atomic, safe checkpoints: weights as safetensors, training state via ``weights_only`` torch.load."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from medssl.errors import MedsslError


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_weights(module: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Save a module's state dict (contiguous CPU tensors) as safetensors, atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata or {}))


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors state dict; a missing or corrupt file is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise MedsslError(f"{path}: checkpoint not found")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types
        raise MedsslError(f"{path}: not a readable safetensors checkpoint ({err})") from err


def save_state(state: dict[str, Any], path: Path) -> None:
    """Optimizer/step/RNG state, written atomically; read back with ``weights_only=True``."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise MedsslError(f"{path}: unreadable training state ({err})") from err
