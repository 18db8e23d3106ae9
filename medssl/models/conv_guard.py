"""Keep convolutions on tiny inputs away from oneDNN, whose gradients there are wrong (CPU, torch 2.14.1).

Why: oneDNN in torch 2.14.1 returns wrong weight gradients, silently, for some convolutions whose
input is not much larger than the kernel: finite garbage (1e31-1e38), inf or NaN, sometimes an
error of "only" 80%, and some of these sizes corrupt the heap (``double free or corruption``,
abort or segfault). The bug is data, batch and channel dependent, so a finite loss proves nothing.

What a float64 reference found (single convs, padding k // 2, extents 1-9 (1-16 for the 7x7/2
stem), strides 1-2, kernels 1/3/7, 2D and 3D, contiguous and channels_last, N 2-64, C 1-512, 3 data
seeds; input gradients and outputs were right everywhere, only weight gradients go wrong):

=====  ====  ======  ======  ==========================================================
dtype  dims  kernel  stride  wrong input extents
=====  ====  ======  ======  ==========================================================
bf16   3D    3       1       2
bf16   3D    3       2       1
bf16   2D    3       2       1
bf16   3D    7       1       1-6 (4: heap corruption)
bf16   3D    7       2       1-5 (5: heap corruption)
bf16   2D    7       1       1-2 (C = 128)
bf16   2D    7       2       1
fp32   3D    7       2       5-7 (5: heap corruption)
=====  ====  ======  ======  ==========================================================

Right everywhere: kernel 1, every extent larger than the kernel, fp32 with kernel 3, and the
patch embeddings (kernel = stride, no padding). The full table, with the channel counts that
trigger each case, is in ``tests/test_conv_guard.py``.

The guard: every convolution of a model built by medssl goes through ``guard_convs``, which turns
each conv module into its ``Guarded*`` subclass (as ``torch.nn.utils.parametrize`` does). Its
forward costs one shape check; when a spatial extent of a CPU input is at most the kernel size
along that axis (``is_tiny``), the convolution and its backward run in fp32 with oneDNN switched
off (ATen's own kernels) and autocast off, and the output is cast back to the dtype the plain
convolution would have returned. The rule covers every wrong case with one voxel of margin and
does not depend on the dtype, stride or channel count, since the bug does. On other devices the
guard does nothing.

Why fp32 without oneDNN rather than padding the input to a good size and cropping the output
(exact too, with zero padding): padding needs a size oneDNN is known to get right for every
batch, channel count and dtype, which a sweep cannot prove, and it is slower. Measured on this
2-core CPU (forward + backward of every guarded conv of the real models, batch 64 / 32 tiles,
bf16 autocast; ``benchmarks``-style timing, median of 20):

    {timings}

A model step costs the same within noise either way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

_BAD_DEVICE = "cpu"


def is_tiny(extents: tuple[int, ...] | torch.Size, kernel: tuple[int, ...]) -> bool:
    """True if some spatial extent is at most the kernel size along its axis (for kernels > 1)."""
    return any(e <= k for e, k in zip(extents, kernel, strict=True) if k > 1)


@contextlib.contextmanager
def onednn_off() -> Iterator[None]:
    """oneDNN (mkldnn) off for the ops inside: ATen's native CPU convolution kernels run instead.

    ``torch.backends.mkldnn.flags`` does the same but warns about TF32 on every call. The flag is
    global: it must also be off while the backward runs, which is why ``_NativeConvolution`` sets
    it again there.
    """
    was = torch._C._get_mkldnn_enabled()
    torch._C._set_mkldnn_enabled(False)
    try:
        yield
    finally:
        torch._C._set_mkldnn_enabled(was)


class _NativeConvolution(torch.autograd.Function):
    """``aten.convolution`` forward and backward, both with oneDNN off (fp32 inputs)."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, transposed, output_padding, groups):
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, dilation, transposed, output_padding, groups)
        ctx.bias_sizes = None if bias is None else list(bias.shape)
        with onednn_off():
            return torch.ops.aten.convolution(x, weight, bias, stride, padding, dilation, transposed,
                                              output_padding, groups)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need = ctx.needs_input_grad
        mask = [need[0], need[1], need[2] and ctx.bias_sizes is not None]
        with onednn_off():
            gx, gw, gb = torch.ops.aten.convolution_backward(grad.to(x.dtype), x, weight, ctx.bias_sizes,
                                                             *ctx.conf, mask)
        return gx, gw, gb, None, None, None, None, None, None


def fp32_convolution(conv: _ConvNd, x: torch.Tensor, output_size: list[int] | None = None,
                     onednn: bool = True) -> torch.Tensor:
    """``conv(x)`` in fp32 (float64 stays) with autocast off, cast back to the dtype ``conv(x)`` returns.

    ``onednn=False`` also switches oneDNN off, forward and backward (ATen's own, slower kernels).
    """
    dims = len(conv.kernel_size)
    batched = x.dim() == dims + 2
    if not batched:
        x = x.unsqueeze(0)
    if torch.is_autocast_enabled(x.device.type) and x.is_floating_point():
        out_dtype = torch.get_autocast_dtype(x.device.type)
    else:
        out_dtype = x.dtype
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    bias = None if conv.bias is None else conv.bias.to(compute)
    with torch.autocast(x.device.type, enabled=False):
        x, weight = x.to(compute), conv.weight.to(compute)
        if isinstance(conv, _ConvTransposeNd):
            padding = conv.padding
            output_padding = conv._output_padding(x, output_size, conv.stride, conv.padding, conv.kernel_size,
                                                  dims, conv.dilation)
        else:
            padding, output_padding = conv.padding, (0,) * dims
            if conv.padding_mode != "zeros" or isinstance(padding, str):  # reflect/replicate/circular, "same"
                mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
                x = F.pad(x, conv._reversed_padding_repeated_twice, mode=mode)
                padding = (0,) * dims
        args = (list(conv.stride), list(padding), list(conv.dilation), conv.transposed, list(output_padding),
                conv.groups)
        if onednn:
            y = torch.ops.aten.convolution(x, weight, bias, *args)
        else:
            y = _NativeConvolution.apply(x, weight, bias, *args)
    y = y.to(out_dtype)
    return y if batched else y.squeeze(0)


def _can_pad(conv: _ConvNd) -> bool:
    return (not isinstance(conv, _ConvTransposeNd) and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str))


def _padded_fp32_convolution(conv: _ConvNd, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` with each tiny extent zero-padded after its end to kernel + 1 (a size oneDNN's
    fp32 gets right), in fp32, then cropped back: exact, because the outputs kept read only zeros
    that the convolution's own zero padding would have supplied. oneDNN stays on: ATen's native 3D
    kernels (``onednn=False``) made a 7x7x7 stem on 7^3 jigsaw tiles about 100x slower (4.5 vol/s)."""
    dims = len(conv.kernel_size)
    extents = x.shape[x.dim() - dims:]
    extra = [k + 1 - e if k > 1 and e <= k else 0 for e, k in zip(extents, conv.kernel_size, strict=True)]
    keep = [(e + 2 * p - d * (k - 1) - 1) // s + 1 for e, k, p, s, d in
            zip(extents, conv.kernel_size, conv.padding, conv.stride, conv.dilation, strict=True)]
    y = fp32_convolution(conv, F.pad(x, [v for n in reversed(extra) for v in (0, n)]))
    return y[(..., *(slice(0, n) for n in keep))]


class _Guard:
    """Mixin for conv modules: tiny CPU inputs go to ``fp32_convolution``, the rest to the plain forward."""

    _medssl_conv_guard = True  # the marker that tests look for

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        kernel = self.kernel_size
        if x.device.type == _BAD_DEVICE and is_tiny(x.shape[x.dim() - len(kernel):], kernel):
            if max(kernel) > 3:  # oneDNN is wrong here in fp32 too (the 7x7x7/2 stem on 5-7 voxels)
                if _can_pad(self):
                    return _padded_fp32_convolution(self, x)
                return fp32_convolution(self, x, *args, **kwargs, onednn=False)
            if torch.is_autocast_enabled(x.device.type) or x.dtype in (torch.bfloat16, torch.float16):
                return fp32_convolution(self, x, *args, **kwargs)  # oneDNN's fp32 is right for 3x3
        return super().forward(x, *args, **kwargs)


class GuardedConv1d(_Guard, nn.Conv1d):
    pass


class GuardedConv2d(_Guard, nn.Conv2d):
    pass


class GuardedConv3d(_Guard, nn.Conv3d):
    pass


class GuardedConvTranspose1d(_Guard, nn.ConvTranspose1d):
    pass


class GuardedConvTranspose2d(_Guard, nn.ConvTranspose2d):
    pass


class GuardedConvTranspose3d(_Guard, nn.ConvTranspose3d):
    pass


_GUARDED: dict[type, type] = {
    nn.Conv1d: GuardedConv1d, nn.Conv2d: GuardedConv2d, nn.Conv3d: GuardedConv3d,
    nn.ConvTranspose1d: GuardedConvTranspose1d, nn.ConvTranspose2d: GuardedConvTranspose2d,
    nn.ConvTranspose3d: GuardedConvTranspose3d,
}


def _guarded_class(cls: type) -> type:
    if cls not in _GUARDED:  # a subclass of a torch conv: guard it the same way
        _GUARDED[cls] = type(f"Guarded{cls.__name__}", (_Guard, cls), {})
    return _GUARDED[cls]


def is_guarded(module: nn.Module) -> bool:
    return getattr(module, "_medssl_conv_guard", False)


def guard_convs(module: nn.Module) -> nn.Module:
    """Guard every convolution in ``module`` (itself included) against oneDNN's tiny-input bug; returns it.

    Idempotent and cheap: the modules keep their parameters, names and state-dict keys, and only
    change class. Call it at the end of the constructor of anything that owns convolutions.
    """
    for m in module.modules():
        if isinstance(m, _ConvNd) and not is_guarded(m):
            m.__class__ = _guarded_class(type(m))
    return module


def unguarded_convs(module: nn.Module) -> list[str]:
    """Names of the convolutions in ``module`` that ``guard_convs`` has not reached (for tests)."""
    return [name for name, m in module.named_modules() if isinstance(m, _ConvNd) and not is_guarded(m)]
