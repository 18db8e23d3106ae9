import pytest
import torch

from medssl.losses import barlow_twins_loss, vicreg_loss


def barlow_naive(z1, z2, lambd, eps=1e-5):
    n, d = z1.shape
    a = (z1 - z1.mean(0)) / (z1.var(0, unbiased=False) + eps).sqrt()
    b = (z2 - z2.mean(0)) / (z2.var(0, unbiased=False) + eps).sqrt()
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(float(a[k, i] * b[k, j]) for k in range(n)) / n
            loss += (1 - c) ** 2 if i == j else lambd * c**2
    return loss


def vicreg_naive(z1, z2, lam=25.0, mu=25.0, nu=1.0):
    n, d = z1.shape
    inv = sum(float((z1[k, i] - z2[k, i]) ** 2) for k in range(n) for i in range(d)) / (n * d)

    def var(z):
        return sum(max(0.0, 1 - (float(z[:, i].var()) + 1e-4) ** 0.5) for i in range(d)) / d

    def cov(z):
        zc = z - z.mean(0)
        total = 0.0
        for i in range(d):
            for j in range(d):
                if i != j:
                    total += (float(zc[:, i] @ zc[:, j]) / (n - 1)) ** 2
        return total / d

    return lam * inv + mu * (var(z1) + var(z2)) / 2 + nu * (cov(z1) + cov(z2))


@pytest.mark.parametrize("n,d,lambd", [(8, 4, 5e-3), (5, 3, 0.5)])
def test_barlow_twins_matches_naive_loop(n, d, lambd):
    z1, z2 = torch.randn(n, d), torch.randn(n, d)
    assert barlow_twins_loss(z1, z2, lambd).item() == pytest.approx(barlow_naive(z1, z2, lambd), rel=1e-4)


def test_barlow_twins_is_zero_for_identical_decorrelated_views():
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])  # standardised, C = I
    assert barlow_twins_loss(z, z.clone()).item() == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize("n,d", [(8, 4), (5, 6)])
def test_vicreg_matches_naive_loop(n, d):
    z1, z2 = torch.randn(n, d) * 0.5, torch.randn(n, d) * 2
    assert vicreg_loss(z1, z2)["loss"].item() == pytest.approx(vicreg_naive(z1, z2), rel=1e-4)


def test_vicreg_hand_computed_collapsed_views():
    z = torch.ones(4, 3)  # identical and constant: no invariance loss, std 0 -> hinge 1, no covariance
    out = vicreg_loss(z, z.clone())
    assert out["invariance"].item() == 0 and out["covariance"].item() == 0
    assert out["variance"].item() == pytest.approx(1 - 1e-2, abs=1e-6)  # 1 - sqrt(0 + 1e-4)


def test_gather_paths_equal_plain_paths_in_one_process(process_group):
    z1, z2 = torch.randn(6, 4, requires_grad=True), torch.randn(6, 4)
    for fn in (lambda g: barlow_twins_loss(z1, z2, gather=g),
               lambda g: vicreg_loss(z1, z2, gather=g)["loss"]):
        plain, gathered = fn(False), fn(True)
        (ga,), (gb,) = torch.autograd.grad(plain, z1), torch.autograd.grad(gathered, z1)
        assert torch.allclose(plain, gathered) and torch.allclose(ga, gb)


def test_losses_stay_fp32_under_bf16_autocast():
    z1, z2 = torch.randn(16, 32), torch.randn(16, 32)
    ref = barlow_twins_loss(z1, z2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = barlow_twins_loss(z1, z2)
    assert out.dtype == torch.float32 and out.item() == pytest.approx(ref.item(), rel=1e-6)
