import pytest
import torch

from medssl.losses import byol_loss, negative_cosine


def test_byol_loss_hand_computed():
    p = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    z = torch.tensor([[5.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])  # cos = 1, 0, -1
    assert byol_loss(p, z).item() == pytest.approx((0 + 2 + 4) / 3)
    assert negative_cosine(p, z).item() == pytest.approx(-(1 + 0 - 1) / 3)


def test_byol_loss_is_the_normalised_mse():
    p, z = torch.randn(6, 4), torch.randn(6, 4)
    naive = ((p / p.norm(dim=1, keepdim=True) - z / z.norm(dim=1, keepdim=True)) ** 2).sum(1).mean()
    assert byol_loss(p, z).item() == pytest.approx(naive.item(), abs=1e-6)


def test_stop_gradient_on_the_target():
    p, z = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    negative_cosine(p, z).backward()
    assert p.grad is not None and z.grad is None
