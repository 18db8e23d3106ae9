"""Atomic, safe checkpoints: weights and training state in safetensors files (nothing is unpickled)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from medssl.errors import MedsslError
from medssl.io import atomic_write


def save_weights(module: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Save a module's state dict (contiguous CPU tensors) as safetensors, atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata or {}))


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors state dict (without a checkpoint's training state); a missing or corrupt
    file is a one-line error."""
    return _weights_only(_read(Path(path)))


def weights_metadata(path: Path) -> dict[str, str]:
    """The string metadata saved with a weights file (``save_weights``'s ``metadata``); reads the
    header only. A missing or unreadable file is a one-line error, as in ``load_weights``."""
    if not Path(path).is_file():
        raise MedsslError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {})
    except Exception as err:  # safetensors raises its own error types
        raise MedsslError(f"{path}: not a readable safetensors checkpoint ({err})") from err


def _read(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise MedsslError(f"{path}: checkpoint not found")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types
        raise MedsslError(f"{path}: not a readable safetensors checkpoint ({err})") from err


# Training state inside the weights file: one atomic file per checkpoint, so a kill can never pair
# new weights with an old optimizer state, and nothing is unpickled on resume. safetensors holds
# only flat tensors and string metadata, so nested state (optimizer, RNGs) is split here into
# tensors under STATE_PREFIX and a JSON skeleton that points at them (no library does this split).
STATE_PREFIX = "_train_state/"


def _pack(obj: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": _pack(torch.from_numpy(obj.copy()), key, tensors)}
    if isinstance(obj, dict):
        return {"__dict__": [[_pack(k, f"{key}.k{i}", tensors), _pack(v, f"{key}.{i}", tensors)]
                             for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        packed = [_pack(v, f"{key}.{i}", tensors) for i, v in enumerate(obj)]
        return {"__tuple__": packed} if isinstance(obj, tuple) else packed
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint ({key})")


def _unpack(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_unpack(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[STATE_PREFIX + obj["__tensor__"]]
    if "__ndarray__" in obj:
        return _unpack(obj["__ndarray__"], tensors).numpy()
    if "__tuple__" in obj:
        return tuple(_unpack(v, tensors) for v in obj["__tuple__"])
    return {_unpack(k, tensors): _unpack(v, tensors) for k, v in obj["__dict__"]}


def save_checkpoint(module: nn.Module, state: dict[str, Any], path: Path) -> None:
    """Weights plus training ``state`` (nested dicts/lists of tensors, arrays and JSON scalars) in one
    safetensors file, written atomically: a kill mid-write leaves the last good checkpoint in place."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    state_tensors: dict[str, torch.Tensor] = {}
    skeleton = _pack(state, "", state_tensors)
    tensors.update({STATE_PREFIX + k: v for k, v in state_tensors.items()})
    meta = {"train_state": json.dumps(skeleton)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(weights, training state) from a file written by ``save_checkpoint``."""
    path = Path(path)
    tensors = _read(path)
    try:
        with safe_open(str(path), "pt") as f:
            skeleton = json.loads((f.metadata() or {})["train_state"])
        state = _unpack(skeleton, tensors)
        if not isinstance(state, dict):
            raise TypeError("the training state is not a mapping")
    except (KeyError, ValueError, TypeError, AttributeError, RecursionError) as err:
        raise MedsslError(f"{path}: holds no readable training state; cannot resume from it") from err
    return _weights_only(tensors), state


def _weights_only(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in tensors.items() if not k.startswith(STATE_PREFIX)}
