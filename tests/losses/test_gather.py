import torch

from medssl.losses.distributed import all_reduce_mean, gather, is_distributed, rank, world_size


def test_single_process_is_the_identity():
    x = torch.randn(3, 2)
    assert not is_distributed() and rank() == 0 and world_size() == 1
    assert gather(x) is x and all_reduce_mean(x) is x


def test_one_process_group_gathers_with_gradient_to_the_local_part(process_group):
    x = torch.randn(3, 2, requires_grad=True)
    y = gather(x)
    assert is_distributed() and torch.equal(y, x)
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    assert torch.equal(all_reduce_mean(x), x.detach())
