"""Small heads shared by the methods."""

from __future__ import annotations

from torch import nn


def projection_mlp(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2,
                   batch_norm: bool = True) -> nn.Sequential:
    """MLP projection head: (Linear -> [BN] -> ReLU) x (num_layers - 1) -> Linear. [B, in] -> [B, out]."""
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers += [nn.Linear(dim, hidden_dim, bias=not batch_norm)]
        layers += [nn.BatchNorm1d(hidden_dim)] if batch_norm else []
        layers += [nn.ReLU(inplace=True)]
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*layers)
