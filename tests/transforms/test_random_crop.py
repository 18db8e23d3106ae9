"""random_crop against the source volume, and the restorative/distortion pretexts training on crops
of larger inputs (the 3D default) or on whole inputs when asked."""

from __future__ import annotations

import pytest
import torch

from medssl.methods import create_method
from medssl.registry import create_backbone
from medssl.transforms.augment import random_crop


@pytest.mark.parametrize("spatial,size", [((10, 14, 9), 6), ((12, 7), 8)])
def test_each_crop_is_the_source_block_at_its_own_offset(spatial, size):
    n = 5
    x = torch.arange(n * 2 * torch.Size(spatial).numel(), dtype=torch.float32).view(n, 2, *spatial)
    out = random_crop(x, size, torch.Generator().manual_seed(0))
    crop = [min(s, size) for s in spatial]
    assert out.shape == (n, 2, *crop)
    strides = x.stride()[2:]
    offsets = set()
    for b in range(n):
        # the first element's flat index gives the offset on every axis
        flat = int(out[b, 0].flatten()[0] - x[b, 0].flatten()[0])
        start = [flat // st % s for st, s in zip(strides, spatial, strict=True)]
        block = x[(b, slice(None), *(slice(o, o + c) for o, c in zip(start, crop, strict=True)))]
        assert torch.equal(out[b], block)
        assert all(0 <= o <= s - c for o, s, c in zip(start, spatial, crop, strict=True))
        offsets.add(tuple(start))
    assert len(offsets) > 1  # offsets are drawn per sample


def test_small_inputs_and_no_size_are_returned_unchanged_without_drawing():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 8, 8, 8)
    state = g.get_state()
    assert random_crop(x, 8, g) is x and random_crop(x, None, g) is x
    assert torch.equal(g.get_state(), state)


def test_crops_follow_the_generator():
    x = torch.rand(3, 1, 12, 12, 12)
    a = random_crop(x, 5, torch.Generator().manual_seed(7))
    b = random_crop(x, 5, torch.Generator().manual_seed(7))
    c = random_crop(x, 5, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("name", ["genesis", "context_restoration", "denoising", "distortion_dense"])
@pytest.mark.parametrize("crop", [True, False])
def test_3d_pretexts_see_size_sided_crops_of_larger_volumes(name, crop):
    size = 20  # resnet10's deepest stage needs > 1 voxel
    backbone = create_backbone("resnet10", 3, 1, width=0.125)
    model = create_method(name, backbone, 3, size, {"crop": crop})
    seen = []
    model.net.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape)))
    out = model.training_step({"image": torch.rand(2, 1, 26, 30, 24)})
    assert torch.isfinite(out["loss"])
    assert seen == [(2, 1, 20, 20, 20) if crop else (2, 1, 26, 30, 24)]
