"""Is fp32 channels_last safe on this CPU? One fine-tuning step (resnet18_small + linear head) and
one 2D U-Net step per (width, batch, input size), channels_last against the default memory format,
each case in a forked child so that a crash is recorded, not fatal. Not a unit test.

    python benchmarks/channels_last_sweep.py > runs/channels_last_sweep.jsonl   # ~2.5 min, 2 cores

One JSON line per case: ``status`` (the child's wait status: 0 ran, else the signal, e.g. 6 abort,
11 segfault), ``rel_err`` (largest per-tensor max |g_cl - g| / max(max |g|, 1e-4)) or ``error``
(a Python error, e.g. BatchNorm on one value per channel). ``engine.channels_last: auto`` keeps
channels_last off in fp32 because of the crashes this finds (results/channels_last_fp32.md).
"""
import copy
import json
import os
from collections.abc import Callable
from typing import Any

import torch

from medssl.eval.finetune import Classifier
from medssl.models.unet import UNet
from medssl.registry import create_backbone


def grads(model: torch.nn.Module, x: torch.Tensor, loss_fn: Callable) -> dict[str, torch.Tensor]:
    """One training-mode backward; every parameter's gradient in the default memory format."""
    model.train()
    loss = loss_fn(model(x))
    loss.backward()
    return {n: p.grad.detach().clone().contiguous() for n, p in model.named_parameters()}


def case(kind: str, width: float, batch: int, size: int, seed: int) -> float:
    """The largest per-tensor gradient difference, channels_last against the default format."""
    torch.manual_seed(seed)
    bb = create_backbone("resnet18_small", 2, 1, width=width)
    x = torch.rand(batch, 1, size, size)
    if kind == "cls":
        model, y = Classifier(bb, 2), torch.randint(0, 2, (batch,))
    else:
        model, y = UNet(bb, 3), torch.randint(0, 3, (batch, size, size))

    def loss_fn(z):
        return torch.nn.functional.cross_entropy(z, y)

    ref = grads(copy.deepcopy(model), x, loss_fn)
    m = copy.deepcopy(model).to(memory_format=torch.channels_last)
    got = grads(m, x.contiguous(memory_format=torch.channels_last), loss_fn)
    return max(float((ref[n] - got[n]).abs().max() / max(float(ref[n].abs().max()), 1e-4)) for n in ref)


def forked(*args: Any) -> dict[str, Any]:
    """``case(*args)`` in a forked child: its result, or its error, plus the child's wait status."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            out = json.dumps({"rel_err": case(*args)})
        except Exception as e:
            out = json.dumps({"error": repr(e)[:200]})
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    _, status = os.waitpid(pid, 0)
    res = json.loads(data) if data else {}
    res["status"] = status
    return res


if __name__ == "__main__":
    torch.set_num_threads(2)
    for kind in ("cls", "unet"):
        for width in (0.125, 0.25, 0.5, 1.0):
            for batch in (1, 2, 3, 5, 8, 16, 33, 64):
                for size in (28, 14, 9, 7, 5, 4, 3, 2):
                    if width >= 0.5 and batch > 16 and size >= 14:
                        continue
                    r = {"kind": kind, "width": width, "batch": batch, "size": size,
                         **forked(kind, width, batch, size, 0)}
                    print(json.dumps(r), flush=True)
