import math

import pytest
import torch
import torch.nn.functional as F

from medssl.losses import moco_infonce, moco_v3_loss


def moco_infonce_naive(q, k, queue, t):
    """Loop version of MoCo's eq. (1): -log exp(q.k+/t) / (exp(q.k+/t) + sum_queue exp(q.k-/t))."""
    q, k, queue = F.normalize(q, dim=1), F.normalize(k, dim=1), F.normalize(queue, dim=1)
    total = 0.0
    for i in range(len(q)):
        pos = math.exp(float(q[i] @ k[i]) / t)
        neg = sum(math.exp(float(q[i] @ n) / t) for n in queue)
        total += -math.log(pos / (pos + neg))
    return total / len(q)


def moco_v3_naive(q, k, t):
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    total = 0.0
    for i in range(len(q)):
        sims = [math.exp(float(q[i] @ k[j]) / t) for j in range(len(k))]
        total += -math.log(sims[i] / sum(sims))
    return 2 * t * total / len(q)


@pytest.mark.parametrize("b,d,k,t", [(4, 8, 16, 0.2), (3, 5, 7, 1.0)])
def test_moco_infonce_matches_naive_loop(b, d, k, t):
    q, key, queue = torch.randn(b, d), torch.randn(b, d), F.normalize(torch.randn(k, d), dim=1)
    expected = moco_infonce_naive(q, key, queue, t)
    assert moco_infonce(q, key, queue, t).item() == pytest.approx(expected, abs=1e-5)


def test_moco_infonce_hand_computed_and_no_gradient_to_keys_or_queue():
    q = torch.tensor([[1.0, 0.0]], requires_grad=True)
    k = torch.tensor([[1.0, 0.0]], requires_grad=True)
    queue = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], requires_grad=True)
    loss = moco_infonce(q, k, queue, 1.0)
    assert loss.item() == pytest.approx(-math.log(math.e / (math.e + 1 + math.exp(-1))), abs=1e-6)
    loss.backward()
    assert q.grad is not None and k.grad is None and queue.grad is None


@pytest.mark.parametrize("b,d,t", [(4, 8, 0.2), (6, 3, 0.5)])
def test_moco_v3_matches_naive_loop(b, d, t):
    q, k = torch.randn(b, d), torch.randn(b, d)
    assert moco_v3_loss(q, k, t).item() == pytest.approx(moco_v3_naive(q, k, t), abs=1e-5)


def test_moco_v3_gather_path_equals_plain_path_in_one_process(process_group):
    q, k = torch.randn(5, 8, requires_grad=True), torch.randn(5, 8)
    plain = moco_v3_loss(q, k, 0.2)
    (g_plain,) = torch.autograd.grad(plain, q)
    gathered = moco_v3_loss(q, k, 0.2, gather=True)
    (g_gather,) = torch.autograd.grad(gathered, q)
    assert torch.allclose(plain, gathered) and torch.allclose(g_plain, g_gather)
