"""The 3D view path: batched affine crop-resize, flips, rotations and the 3-tap blur."""

import math

import pytest
import torch
import torch.nn.functional as F

from medssl.transforms.augment import AugmentConfig, RandomResizedCrop3D, ViewAugment, gaussian_blur3

OFF = {"crop_scale": (1.0, 1.0), "hflip": 0.0, "rotation": 0.0, "blur_p": 0.0, "noise_p": 0.0,
       "p_intensity": 0.0}


def test_identity_config_returns_the_volume():
    x = torch.rand(3, 1, 8, 8, 8)
    assert torch.allclose(ViewAugment(3, 8, AugmentConfig(**OFF))(x), x, atol=1e-5)


@pytest.mark.parametrize("flag,dim", [("hflip", -1), ("vflip", -2), ("dflip", -3)])
def test_flips_along_each_axis(flag, dim):
    x = torch.rand(2, 1, 6, 6, 6)
    out = ViewAugment(3, 6, AugmentConfig(**{**OFF, flag: 1.0}))(x)
    assert torch.allclose(out, x.flip(dim), atol=1e-5)


def test_crop_keeps_a_random_sub_box_per_sample():
    ramp = torch.linspace(0, 1, 16).expand(4, 1, 16, 16, 16).contiguous()  # value = x position
    cfg = AugmentConfig(**{**OFF, "crop_scale": (0.125, 0.125)})  # half of each side
    out = RandomResizedCrop3D(16, cfg)(ramp)
    spans = out.amax(dim=(1, 2, 3, 4)) - out.amin(dim=(1, 2, 3, 4))
    assert ((spans > 0.3) & (spans < 0.65)).all()  # ~half the ramp, side jitter <= 15%
    assert out[:, 0, 0, 0, 0].unique().numel() > 1  # placed differently per sample


def test_output_size_is_the_requested_side_for_local_crops():
    assert ViewAugment(3, 7)(torch.rand(2, 1, 16, 16, 16)).shape == (2, 1, 7, 7, 7)


def test_rotations_turn_the_volume():
    x = torch.zeros(8, 1, 9, 9, 9)
    x[:, :, 4, 4, :] = 1  # a line along x through the centre
    torch.manual_seed(1)
    out = ViewAugment(3, 9, AugmentConfig(**{**OFF, "rotation": 30.0}))(x)
    changed = [not torch.allclose(o, x[0], atol=1e-4) for o in out]
    assert any(changed) and not all(changed)  # half of the samples are rotated


def test_blur_matches_a_3_tap_gaussian_convolution_per_sample():
    x = torch.rand(2, 1, 5, 6, 7)
    sigma = torch.tensor([0.5, 1.0])
    out = gaussian_blur3(x, sigma)
    for i, s in enumerate(sigma):
        k = torch.exp(-torch.tensor([1.0, 0.0, 1.0]) / (2 * s**2))
        k = k / k.sum()
        ref = x[i : i + 1]
        for axis in range(3):
            shape = [1, 1, 1, 1, 1]
            shape[2 + axis] = 3
            pad = [0, 0] * 3
            pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = 1
            ref = F.conv3d(F.pad(ref, pad, mode="replicate"), k.reshape(shape))
        assert torch.allclose(out[i : i + 1], ref, atol=1e-6)
    assert torch.allclose(gaussian_blur3(x, torch.tensor([1e-3, 1e-3])), x)
    assert math.isclose(float(gaussian_blur3(torch.full((1, 1, 4, 4, 4), 0.3), sigma[:1]).std()), 0.0,
                        abs_tol=1e-6)
