"""Keep convolutions on tiny inputs away from oneDNN's wrong gradients (CPU, torch 2.14.1).

Why: oneDNN in torch 2.14.1 returns wrong weight gradients, silently, for some convolutions whose
input is barely larger than the kernel: finite garbage (1e16-1e38), inf or NaN, or an error of
"only" 40-100% that looks like a plausible gradient; a few sizes corrupt the heap (abort,
segfault or a hang). Outputs and input gradients were right in every case measured.

Measured against float64 (single convs, padding k // 2, extents 1-9, strides 1-2, kernels 1/3/7,
2D and 3D, N 2-64, C 1-512, 2-3 data seeds; 2D also channels_last, with the same wrong cases;
3D 3x3x3 also on mixed extents; 7x7x7/2 stems with 1 or 3 input channels on 1-6 voxels):

=====  ====  ======  ======  ==============================================================
dtype  dims  kernel  stride  wrong input extents
=====  ====  ======  ======  ==============================================================
bf16   3D    3       1       2 (any C >= 16; a depth of 2 is enough: 2x8x8 too, not 8x8x2)
bf16   3D    3       2       1 (C >= 16; a width of 1 is enough: 8x8x1 too, not 1x8x8)
bf16   2D    3       2       1 (C >= 16; 8x1 too)
bf16   3D    7       1       1-6 (C >= 16-32; 4: heap corruption)
bf16   3D    7       2       1-5 (C >= 16; 5: heap corruption)
bf16   2D    7       1       1-2 (C = 128)
bf16   2D    7       2       1 (C >= 32)
fp32   3D    7       2       5-7 (also with 1 or 3 input channels: the stem; 5: heap corruption)
=====  ====  ======  ======  ==============================================================

Right everywhere: kernel 1, every extent larger than the kernel, fp32 with kernel 3, channel
counts below 16 (which is why the tests use >= 16). Not measured: transposed convolutions and
patch embeddings (kernel = stride); the guard treats them by the same rule.

The guard: every convolution of a model built by medssl goes through ``guard_convs`` (called by
the backbones, the U-Net, Mask R-CNN and ``create_backbone``), which turns each conv module into its
``Guarded*`` subclass (as ``torch.nn.utils.parametrize`` does). Its forward costs one shape check.
When a spatial extent of a CPU input is at most the kernel size along that axis (``is_tiny``; it
covers every wrong case with a margin and ignores the dtype, stride and channels, which the bug
depends on in ways a sweep cannot pin down):

- kernels of 3 or less, under autocast or in bf16/fp16: the convolution runs in fp32 with
  autocast off (oneDNN's fp32 is right there), and the output is cast back to the dtype the plain
  convolution returns; in fp32 nothing changes;
- larger kernels (the 7x7x7/2 stem on 5-7 voxel tiles, a patch embedding on one patch), where
  oneDNN's fp32 is wrong too: each tiny extent is zero-padded after its end to kernel + 1 voxels,
  the convolution runs in fp32 on oneDNN and the output is cropped back (exact: the outputs kept
  read only zeros that the convolution's own padding would supply; padding to the kernel size
  alone still fails the float64 sweep). Transposed convolutions and other padding modes, which
  cannot be padded this way, run in fp32 with oneDNN off (ATen's kernels, forward and backward).

On other devices the guard does nothing.

Why fp32 rather than padding every tiny input and staying in bf16: padding needs a size oneDNN
gets right for every batch, channel count and dtype, which a sweep cannot prove (bf16 is wrong
at 2 but right at 3 and 4 voxels for 3x3x3; 4 and 5 voxels are wrong for 7x7x7), and measured it
is the slowest option; ATen's own kernels are exact but slow. Forward + backward of the convs
that are tiny, bf16 autocast, resnet10 x0.5 at the benchmark batch (128 images), median of 7:

==========================================  ======  ===========  =========  =================
config (tiny convs)                         plain   fp32 oneDNN  fp32 ATen  bf16, pad to k+1
==========================================  ======  ===========  =========  =================
28^3 volumes, 2 views (3 convs)             28 ms   68 ms        296 ms     458 ms
relative location 7^3 tiles (9 convs)       69 ms   102 ms       245 ms     593 ms
jigsaw / rubik 12^3 cubes, 8 per image (8)  232 ms  360 ms       1544 ms    2311 ms
==========================================  ======  ===========  =========  =================

("plain" is oneDNN's wrong bf16; the guard takes the fp32 oneDNN column.) The stem on the 7^3
tiles, padded to 8^3 in fp32: 33 ms against 31 ms plain and 38-44 ms with ATen's kernels. A whole
bf16 backbone forward + backward, guarded against unguarded (one thread, a shared machine):
4.5 s against 4.1 s at 28^3, 3.15 s against 3.23 s at 64^3, 118 ms against 116 ms on the tiles.
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
    that the convolution's own zero padding would have supplied. oneDNN stays on: with it off the
    7x7x7 stem on 7^3 tiles measured 38-44 ms against 33 ms padded (a first measurement of ~100x
    slower was taken on a heavily shared machine and was wrong)."""
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
