"""What a run cost: parameters, FLOPs per sample, peak memory (for the report's compute table).

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions, forward
only, one sample; a multiply-add counts as 2). Peak memory is the CUDA allocator's peak on a GPU
and the process's peak resident set (``ru_maxrss``, never reset) on a CPU.
"""

from __future__ import annotations

import resource
import sys

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; momentum copies included)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def flops_per_sample(model: nn.Module, sample: torch.Tensor) -> int:
    """Forward FLOPs of ``model`` on one input ``[1, C, *S]`` (float, on the model's device);
    compiled parts (``engine.compile``) run eagerly here, where the counter sees every op."""
    was_training = model.training
    model.eval()
    try:
        with torch.compiler.set_stance("force_eager"), FlopCounterMode(display=False) as counter:
            model(sample)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory in MiB since :func:`reset_peak_memory` (CUDA) or since the process began (CPU RSS)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)
