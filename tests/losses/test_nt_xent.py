import math

import pytest
import torch
import torch.nn.functional as F

from medssl.losses import nt_xent


def nt_xent_naive(z1: torch.Tensor, z2: torch.Tensor, t: float) -> torch.Tensor:
    """Loop version of SimCLR's eq. (1), averaged over all 2N anchors."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        sims = [math.exp(float(z[i] @ z[k]) / t) for k in range(2 * n) if k != i]
        total += -math.log(math.exp(float(z[i] @ z[pos]) / t) / sum(sims))
    return torch.tensor(total / (2 * n))


@pytest.mark.parametrize("batch,dim,t", [(2, 3, 0.5), (8, 16, 0.1), (5, 4, 1.0)])
def test_nt_xent_matches_naive_loop(batch, dim, t):
    z1, z2 = torch.randn(batch, dim), torch.randn(batch, dim)
    assert torch.allclose(nt_xent(z1, z2, t), nt_xent_naive(z1, z2, t), atol=1e-5)


def test_nt_xent_hand_computed_orthogonal_pairs():
    # Two identical pairs on orthogonal axes: positive sim 1, negatives 0.
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    expected = -math.log(math.e / (math.e + 2))  # t = 1, per anchor: e^1 / (e^1 + e^0 + e^0)
    assert nt_xent(z1, z1.clone(), 1.0).item() == pytest.approx(expected, abs=1e-6)


def test_nt_xent_is_scale_invariant_and_rejects_bad_shapes():
    z1, z2 = torch.randn(4, 8), torch.randn(4, 8)
    assert torch.allclose(nt_xent(z1, z2), nt_xent(3 * z1, 0.5 * z2), atol=1e-6)
    with pytest.raises(ValueError, match="two \\[B, D\\]"):
        nt_xent(z1, z2[:3])
