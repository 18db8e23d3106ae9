"""Check a model's bf16 gradients: one step under bf16 autocast against the same step in fp32, and
every convolution on a small input against float64.

Why two checks: oneDNN (torch 2.14.1) returns wrong convolution weight gradients on tiny inputs
(medssl/models/conv_guard.py). A finite loss or finite gradients prove nothing (most wrong values
are finite, 1e31-1e38, some are off by "only" ~100%).

1. Step check: the step runs in fp32, then, from the same model state and torch RNG (so the same
   views, crops and corruptions are drawn), under bf16 autocast. Per parameter,
   ``||g_bf16 - g_fp32|| / max(||g_fp32||, 1e-3 * max over parameters ||g_fp32||)`` must be at
   most ``STEP_TOL``. The floor keeps parameters whose exact gradient is ~0 (a bias right before a
   BatchNorm) from dividing by nothing. The tolerance is loose on purpose: in these tiny
   random-init models the bf16 rounding of activations and upstream gradients is amplified by
   BatchNorm's batch statistics (cancellation in its backward), by the losses' temperatures and by
   the augmentations themselves running under autocast (views differ by up to 0.08 in intensity).
   Measured with the guard on (the 8 joint-embedding methods x 3 models x 2 seeds): at most 2.3,
   mostly BatchNorm parameters (conv weights <= 1.5). So this check catches garbage, inf and NaN,
   not an error of 50-100%: that is the conv check's job.
2. Conv check (the precise one): during both passes every convolution records its inputs and
   upstream gradients; for each one called on an input with a spatial extent <= 9 (the range swept
   in tests/test_conv_guard.py; larger inputs were right) the weight gradient is recomputed in
   float64 from exactly those and must match the one the step produced within ``CONV_TOL``, as in
   the conv sweep. This catches any wrong value, however small, whatever the noise of 1.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from medssl.models.conv_guard import is_tiny

STEP_TOL = 4.0  # see 1. above: measured <= 2.3 with the guard, up to inf without
# see tests/test_conv_guard.py: right bf16 results <= 0.0075, fp32 <= 3e-6 (relative to max |ref|)
CONV_TOL = {"fp32": 1e-4, "bf16": 0.02}
SMALL = 9  # largest spatial extent of a conv input that the conv check looks at


@contextlib.contextmanager
def recording_convs(model: nn.Module) -> Iterator[list]:
    """Inside: every conv call of ``model`` with gradients appends (conv, input, [upstream gradient])."""
    calls: list = []

    def hook(conv: nn.Module, args: tuple, out: torch.Tensor) -> None:
        x = args[0]
        if not conv.weight.requires_grad or not torch.is_grad_enabled():
            return
        if torch.is_autocast_enabled("cpu"):  # what the plain convolution computes with
            x = x.to(torch.get_autocast_dtype("cpu"))
        grad: list[torch.Tensor] = []
        out.register_hook(lambda g: grad.append(g.detach()))
        calls.append((conv, x.detach(), grad))

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, _ConvNd)]
    try:
        yield calls
    finally:
        for h in hooks:
            h.remove()


def assert_convs_right(model: nn.Module, calls: list, precision: str, hits_the_bug: bool = True) -> dict:
    """Each conv called on a small input: its weight gradient (``.grad``, from one backward) against
    float64 recomputed from all its recorded calls' inputs and upstream gradients. Returns the errors."""
    names = {m: name for name, m in model.named_modules()}
    small = {conv for conv, x, _ in calls if min(x.shape[2:]) <= SMALL}
    expected: dict[nn.Module, torch.Tensor] = {}
    for conv, x, grad in calls:
        if conv not in small:
            continue
        assert len(grad) == 1, "a recorded convolution got no gradient"
        w = conv.weight.detach().double().requires_grad_()  # (a weight gradient does not depend on w)
        params = {"weight": w} | ({} if conv.bias is None else {"bias": conv.bias.detach().double()})
        y = torch.func.functional_call(conv, params, (x.double(),))
        (gw,) = torch.autograd.grad(y, w, grad[0].double())
        expected[conv] = expected.get(conv, 0) + gw
    errors = {}
    for conv, gw in expected.items():
        got = conv.weight.grad.double()
        err = ((got - gw).abs().max() / gw.abs().max().clamp_min(1e-30)).item()
        errors[f"{precision} {names[conv]}"] = err if math.isfinite(err) else math.inf
    bad = {n: e for n, e in errors.items() if not e <= CONV_TOL[precision]}
    assert not bad, f"conv weight gradients differ from float64: {bad}"
    if hits_the_bug:
        assert any(is_tiny(x.shape[2:], conv.kernel_size) for conv, x, _ in calls), "no tiny conv input"
    return errors


def assert_close_to_fp32(g16: dict[str, torch.Tensor], g32: dict[str, torch.Tensor]) -> dict:
    """Per parameter relative L2 distance of bf16 from fp32 gradients (floored, see 1.) <= STEP_TOL."""
    assert g16.keys() == g32.keys()
    floor = 1e-3 * max(g.norm() for g in g32.values())
    errors = {}
    for name, ref in g32.items():
        got = g16[name].float()
        ok = torch.isfinite(got).all()
        errors[name] = ((got - ref).norm() / ref.norm().clamp_min(floor)).item() if ok else math.inf
    bad = {n: e for n, e in errors.items() if not e <= STEP_TOL}
    assert not bad, f"bf16 gradients far from fp32: {bad}"
    return errors


def gradients(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def check_bf16_step(model: nn.Module, step: Callable[[], torch.Tensor], hits_the_bug: bool = True) -> dict:
    """Run ``step()`` (returns the loss) in fp32 and in bf16 from the same state; assert the checks above.

    ``hits_the_bug``: assert that some convolution of the bf16 step got an input of a size where
    oneDNN is wrong (``conv_guard.is_tiny``), so the test exercises the guard. Returns the errors.
    """
    state, rng = copy.deepcopy(model.state_dict()), torch.get_rng_state()
    grads, conv_err = {}, {}
    for precision in ("fp32", "bf16"):
        model.load_state_dict(state)  # queues, centres, BatchNorm statistics, corruption generators
        torch.set_rng_state(rng)  # the same views, crops and corruptions
        model.zero_grad(set_to_none=True)
        with recording_convs(model) as calls:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = step()
            assert loss.dtype == torch.float32 and torch.isfinite(loss), loss
            loss.backward()
        grads[precision] = gradients(model)
        conv_err |= assert_convs_right(model, calls, precision, hits_the_bug and precision == "bf16")
    return {"step": assert_close_to_fp32(grads["bf16"], grads["fp32"]), "conv": conv_err}
