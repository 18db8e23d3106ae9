import math

import pytest
import torch

from medssl.losses import dino_loss, update_center


def dino_naive(student, teacher, center, ts, tt):
    total, terms = 0.0, 0
    for g, t in enumerate(teacher):
        for v, s in enumerate(student):
            if v == g:
                continue
            for b in range(len(t)):
                pt = torch.softmax((t[b] - center[0]) / tt, 0)
                ps = torch.softmax(s[b] / ts, 0)
                total += -sum(float(pt[k]) * math.log(float(ps[k])) for k in range(len(pt))) / len(t)
            terms += 1
    return total / terms


@pytest.mark.parametrize("crops", [2, 4])
def test_dino_loss_matches_naive_loop(crops):
    student = [torch.randn(3, 6) for _ in range(crops)]
    teacher = [torch.randn(3, 6) for _ in range(2)]
    center = torch.randn(1, 6) * 0.1
    out = dino_loss(student, teacher, center, 0.1, 0.04)
    assert out.item() == pytest.approx(dino_naive(student, teacher, center, 0.1, 0.04), rel=1e-4)


def test_dino_loss_hand_computed_uniform_teacher():
    # a constant teacher gives the uniform target: loss = -mean_k log softmax(s)_k
    student = [torch.zeros(1, 4), torch.tensor([[1.0, 0.0, 0.0, 0.0]])]
    teacher = [torch.zeros(1, 4), torch.zeros(1, 4)]
    expected_v1 = math.log(math.exp(10) + 3) - 10 / 4  # student crop 1 against teacher crop 0
    expected_v0 = math.log(4)  # student crop 0 against teacher crop 1
    out = dino_loss(student, teacher, torch.zeros(1, 4), 0.1, 0.04)
    assert out.item() == pytest.approx((expected_v0 + expected_v1) / 2, rel=1e-5)


def test_center_update_hand_computed_and_gather_path(process_group):
    teacher = [torch.tensor([[1.0, 3.0], [3.0, 1.0]]), torch.tensor([[2.0, 2.0], [2.0, 6.0]])]
    center = torch.tensor([[10.0, 0.0]])
    new = update_center(center, teacher, momentum=0.9)
    assert torch.allclose(new, torch.tensor([[0.9 * 10 + 0.1 * 2.0, 0.1 * 3.0]]))
    assert torch.equal(update_center(center, teacher, 0.9, gather=True), new)


def test_teacher_gets_no_gradient():
    s, t = torch.randn(2, 5, requires_grad=True), torch.randn(2, 5, requires_grad=True)
    dino_loss([s, s * 2], [t, t * 2], torch.zeros(1, 5)).backward()
    assert s.grad is not None and t.grad is None
