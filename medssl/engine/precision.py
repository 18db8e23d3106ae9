"""Device and precision: the one place that turns ``engine.device`` and ``engine.precision`` into a
``torch.device``, an autocast region and (for fp16) a gradient scaler.

Rules (``auto``):
- device: CUDA when present, else Apple MPS when present, else the CPU.
- precision on CUDA: bf16 where the GPU supports it (Ampere and newer), else fp16 with a
  ``GradScaler``; on the CPU: bf16 where the CPU has native bf16 (AVX512-BF16/AMX: 2.0-2.3x the fp32
  speed here), else fp32; on MPS: fp32 (MPS autocast is still partial in torch 2.14).
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch

from medssl.engine.dist import launched_by_torchrun
from medssl.errors import MedsslError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto | cpu | cuda | cuda:N | mps`` -> a device that exists here (else a one-line error)."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise MedsslError(f"engine.device must be auto, cpu, cuda, cuda:N or mps, got '{name}'") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise MedsslError(f"engine.device={name} but no CUDA GPU is visible; use auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise MedsslError(f"engine.device={name}: only {torch.cuda.device_count()} GPU(s) visible")
        if device.index is not None and launched_by_torchrun():
            raise MedsslError(f"engine.device={name} under torchrun: each process takes the GPU of its "
                              "LOCAL_RANK; use cuda or auto (choose the GPUs with CUDA_VISIBLE_DEVICES)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise MedsslError(f"engine.device={name} but MPS is not available; use auto or cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise MedsslError(f"engine.device must be auto, cpu, cuda, cuda:N or mps, got '{name}'")
    return device


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 natively (not emulated): what ``precision=auto`` picks bf16 on."""
    if device.type == "cuda":  # native from Ampere (sm_80) on; torch.cuda.is_bf16_supported() also
        # says yes to the slow emulation on a V100 or T4, where fp16 with a loss scaler is the fast path
        return bool(torch.version.hip) or torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        return torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return False


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> torch.dtype | None:
    """``engine.precision`` on ``device`` -> the autocast dtype, or None for fp32 (see the rules above)."""
    device = resolve_device(device)
    if precision not in PRECISIONS:
        raise MedsslError(f"engine.precision must be auto, bf16, fp16 or fp32, got '{precision}'")
    if precision == "fp32":
        return None
    if precision == "auto":
        if native_bf16(device):
            return torch.bfloat16
        return torch.float16 if device.type == "cuda" else None
    if precision == "bf16" and not native_bf16(device):
        raise MedsslError(f"engine.precision=bf16 but this {device.type.upper()} has no native bf16; "
                          "use auto or fp32")
    if precision == "fp16" and device.type != "cuda":
        raise MedsslError(f"engine.precision=fp16 is for CUDA GPUs (device is {device.type}); use auto, "
                          "bf16 or fp32")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def precision_name(dtype: torch.dtype | None) -> str:
    """The ``engine.precision`` name of an autocast dtype: None -> ``fp32`` (what a results row records)."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """The autocast region for ``dtype`` on ``device`` (a no-op region for fp32)."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler | None:
    """A loss scaler for fp16 (its 5-bit exponent underflows small gradients); None otherwise."""
    return torch.amp.GradScaler(device.type) if dtype == torch.float16 else None


def resolve_channels_last(channels_last: bool | None, precision: torch.dtype | None,
                          device: torch.device | None = None) -> bool:
    """None -> channels_last with a reduced precision. Measured here it speeds up 2D CNN training by
    1.15-1.2x in both precisions (benchmarks/results/throughput.json), but in fp32 oneDNN (torch
    2.14.1) aborts or segfaults in width-0.125 ResNet and U-Net steps at 28 px with odd batches
    (benchmarks/channels_last_sweep.py, results/channels_last_fp32.md), so fp32 keeps the default
    memory format unless asked. On CUDA, channels_last is what tensor cores want."""
    return precision is not None if channels_last is None else channels_last


def model_device(model: torch.nn.Module) -> torch.device:
    """The device a model lives on (that of its first parameter or buffer; CPU if it has none)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")
