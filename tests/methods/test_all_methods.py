"""Every joint-embedding method: optimisation steps in 2D and 3D, momentum targets, collapse, bf16, config."""

import math

import pytest
import torch
from bf16_grads import check_bf16_step
from joint_fixtures import JOINT_EMBEDDING, TINY_ARGS, tiny_batch, tiny_method

from medssl.errors import MedsslError
from medssl.methods import METHODS, create_method, method_config, method_defaults
from medssl.models.utils import cosine_momentum
from medssl.registry import create_backbone

BF16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()

# method -> (online modules, target modules, momentum after step k of K given the config)
MOMENTUM = {
    "moco_v2": (("backbone", "projector"), ("momentum_backbone", "momentum_projector"),
                lambda c, k, n: c.momentum),
    "moco_v3": (("backbone", "projector"), ("momentum_backbone", "momentum_projector"),
                lambda c, k, n: cosine_momentum(c.momentum, k, n)),
    "byol": (("backbone", "projector"), ("target_backbone", "target_projector"),
             lambda c, k, n: cosine_momentum(c.momentum, k, n)),
    "dino": (("backbone", "head"), ("teacher_backbone", "teacher_head"),
             lambda c, k, n: cosine_momentum(c.momentum, k, n)),
}


def params(module):
    return [p.detach().clone() for p in module.parameters()]


def optimise(model, batch, steps, total=10, lr=1e-2):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    outs = []
    for step in range(steps):
        out = model.training_step(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        if hasattr(model, "after_step"):
            model.after_step(step, total)
        outs.append(out)
    return outs


def test_the_registry_holds_the_zoo():
    assert set(JOINT_EMBEDDING) == {"simclr", "moco_v2", "moco_v3", "byol", "simsiam", "barlow_twins",
                                    "vicreg", "dino"}
    assert set(JOINT_EMBEDDING) <= set(METHODS)


@pytest.mark.parametrize("name", JOINT_EMBEDDING)
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_two_steps_finite_loss_backbone_changes_targets_follow(name, spatial_dims):
    model = tiny_method(name, spatial_dims)
    before = params(model.backbone)
    outs = optimise(model, tiny_batch(spatial_dims), 2)
    assert all(math.isfinite(o["loss"].item()) for o in outs)
    assert all(o["loss"].dim() == 0 for o in outs)
    assert any(not torch.equal(a, b) for a, b in zip(before, params(model.backbone), strict=True))
    assert all(p.grad is not None for p in model.backbone.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", sorted(MOMENTUM))
def test_momentum_target_is_the_specified_ema(name):
    model = tiny_method(name, 2)
    online_names, target_names, momentum = MOMENTUM[name]
    optimise(model, tiny_batch(2), 1)  # targets now differ from a fresh copy
    targets = [params(getattr(model, t)) for t in target_names]
    total, step = 10, 1
    out = model.training_step(tiny_batch(2))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    out["loss"].backward()
    opt.step()
    online = [params(getattr(model, o)) for o in online_names]
    model.after_step(step, total)
    m = momentum(model.cfg, step, total)
    assert 0.9 < m < 1
    for t_old, o_new, t_name in zip(targets, online, target_names, strict=True):
        t_new = params(getattr(model, t_name))
        for a, b, c in zip(t_old, o_new, t_new, strict=True):
            assert torch.allclose(c, m * a + (1 - m) * b, atol=1e-6)
        assert not any(p.requires_grad for p in getattr(model, t_name).parameters())


@pytest.mark.parametrize("name", ["byol", "simsiam"])
def test_no_collapse_after_a_few_steps(name):
    model = tiny_method(name, 2)
    outs = optimise(model, tiny_batch(2, n=16), 5, lr=1e-3)
    dim = TINY_ARGS[name]["proj_dim"]
    assert outs[-1]["z_std"].item() > 0.3 / math.sqrt(dim)  # a collapsed embedding has std 0
    with torch.no_grad():
        model.eval()
        feats = model.backbone(tiny_batch(2, n=16)["image"])
    assert feats.std(dim=0).mean() > 1e-3


@pytest.mark.parametrize("name", ["moco_v3", "dino"])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_vit_backbone(name, spatial_dims):
    model = tiny_method(name, spatial_dims, backbone="vit_tiny")
    before = params(model.backbone)
    outs = optimise(model, tiny_batch(spatial_dims), 2)
    assert all(math.isfinite(o["loss"].item()) for o in outs)
    assert any(not torch.equal(a, b) for a, b in zip(before, params(model.backbone), strict=True))


@pytest.mark.skipif(not BF16, reason="no native bf16 on this CPU")
@pytest.mark.parametrize("name", JOINT_EMBEDDING)
@pytest.mark.parametrize("spatial_dims,backbone,size", [(2, "resnet18_small", 16), (3, "resnet18_small", 16),
                                                        (3, "resnet10", 28)])
def test_bf16_gradients_match_fp32(name, spatial_dims, backbone, size):
    """One bf16 step against fp32 on the same views, and every small conv against float64
    (tests/bf16_grads.py). 3D hits oneDNN's wrong sizes: resnet18_small at 16^3 has 2^3 inputs to
    3x3x3 stride-1 convs in layer4, resnet10 at 28^3 in layer3 and 1^3 into layer4's stride 2."""
    net = create_backbone(backbone, spatial_dims, 1, width=0.125, img_size=size)
    model = create_method(name, net, spatial_dims, size, TINY_ARGS[name])
    batch = {"image": torch.rand(8, 1, *[size] * spatial_dims)}
    check_bf16_step(model, lambda: model.training_step(batch)["loss"], hits_the_bug=spatial_dims == 3)


@pytest.mark.parametrize("name", JOINT_EMBEDDING)
def test_defaults_round_trip_through_the_yaml_config_and_unknown_keys_fail(name):
    assert method_config(name, method_defaults(name)) == method_config(name, {})
    with pytest.raises(MedsslError, match=r"unknown key 'pretrain\.method_args\.nope'"):
        method_config(name, {"nope": 1})
