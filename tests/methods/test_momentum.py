"""The BYOL cosine momentum schedule against hand values, and every momentum target moved by the EMA
formula with that momentum (computed here, not by the code's own ``cosine_momentum``).

Supersedes the schedule half of ``test_all_methods.py::test_momentum_target_is_the_specified_ema``,
which took the expected momentum from ``cosine_momentum`` itself."""

import math

import pytest
import torch
from joint_fixtures import tiny_method

from medssl.models.utils import cosine_momentum

# method -> (online modules, target modules, cosine schedule?)
TARGETS = {
    "moco_v2": (("backbone", "projector"), ("momentum_backbone", "momentum_projector"), False),
    "moco_v3": (("backbone", "projector"), ("momentum_backbone", "momentum_projector"), True),
    "byol": (("backbone", "projector"), ("target_backbone", "target_projector"), True),
    "dino": (("backbone", "head"), ("teacher_backbone", "teacher_head"), True),
}


def test_cosine_momentum_hand_values():
    # BYOL Sec. 3.2: m = 1 - (1 - m0) (cos(pi k / K) + 1) / 2 with m0 = 0.99, K = 10
    assert cosine_momentum(0.99, 0, 10) == pytest.approx(0.99, abs=1e-12)
    assert cosine_momentum(0.99, 5, 10) == pytest.approx(0.995, abs=1e-12)  # cos(pi/2) = 0
    assert cosine_momentum(0.99, 10, 10) == pytest.approx(1.0, abs=1e-12)
    assert cosine_momentum(0.99, 2.5, 10) == pytest.approx(1 - 0.01 * (0.5 * 2 ** 0.5 + 1) / 2, abs=1e-12)
    assert cosine_momentum(0.9, 15, 10) == pytest.approx(1.0, abs=1e-12)  # clamped after the end
    assert cosine_momentum(0.9, 5, 10, final=0.95) == pytest.approx(0.925, abs=1e-12)


@pytest.mark.parametrize("step", [0, 3, 10])
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_target_is_the_ema_of_the_online_net_with_the_scheduled_momentum(name, step):
    total, base = 10, 0.9
    model = tiny_method(name, 2, momentum=base)
    online_names, target_names, cosine = TARGETS[name]
    with torch.no_grad():  # move the online nets away from their copies, as training would
        for o in online_names:
            for p in getattr(model, o).parameters():
                p.add_(torch.randn_like(p))
    old = [[p.detach().clone() for p in getattr(model, t).parameters()] for t in target_names]
    online = [[p.detach().clone() for p in getattr(model, o).parameters()] for o in online_names]
    model.after_step(step, total)
    m = 1 - (1 - base) * (math.cos(math.pi * step / total) + 1) / 2 if cosine else base
    for t_old, o_new, t_name in zip(old, online, target_names, strict=True):
        new = list(getattr(model, t_name).parameters())
        assert len(new) == len(t_old) == len(o_new) > 0
        for a, b, c in zip(t_old, o_new, new, strict=True):
            assert torch.allclose(c, m * a + (1 - m) * b, atol=1e-6, rtol=0)
        assert not any(p.requires_grad for p in new)
