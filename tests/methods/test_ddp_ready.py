"""Every method, 2D and 3D, is ready for DistributedDataParallel as ``fit`` wraps it: one training
step puts a gradient on every trainable parameter (DDP without ``find_unused_parameters`` fails on
the second step otherwise; MAE's decoder once had an unused cross-attention norm)."""

import pytest
import torch
from joint_fixtures import TINY_ARGS, tiny_method

from medssl.methods import METHODS

PATCHED = {"distortion_maskrcnn", "jigsaw", "relative_location", "rubik"}  # need a grid of patches
CASES = [(name, dims) for name in sorted(METHODS) for dims in (2, 3)
         if not (name == "distortion_maskrcnn" and dims == 3)]  # Mask R-CNN is 2D only


def build(name: str, dims: int) -> tuple[torch.nn.Module, int]:
    size = 32 if dims == 3 or name in PATCHED else 16
    args = {"weights": {"genesis": 1.0, "simclr": 0.5, "rotation": 0.2},
            "args": {"simclr": TINY_ARGS["simclr"]}} if name == "combo" else {}
    return tiny_method(name, dims, backbone="vit_tiny" if name == "mae" else None, size=size, **args), size


@pytest.mark.parametrize(("name", "dims"), CASES)
def test_one_step_gives_every_trainable_parameter_a_gradient(name, dims):
    torch.manual_seed(0)
    model, size = build(name, dims)
    model.train()
    model.training_step({"image": torch.rand(4, 1, *[size] * dims)})["loss"].backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []
