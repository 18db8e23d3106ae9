"""Small heads shared by the methods."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def projection_mlp(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2,
                   batch_norm: bool = True, last_bn: bool = False) -> nn.Sequential:
    """MLP head: (Linear -> [BN] -> ReLU) x (num_layers - 1) -> Linear [-> BN]. [B, in] -> [B, out].

    ``last_bn`` adds a BatchNorm without affine parameters on the output (SimSiam's projector,
    MoCo v3's projector and predictor); ``num_layers=2`` with a small ``hidden_dim`` is the
    bottleneck predictor of BYOL/SimSiam/MoCo v3.
    """
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers += [nn.Linear(dim, hidden_dim, bias=not batch_norm)]
        layers += [nn.BatchNorm1d(hidden_dim)] if batch_norm else []
        layers += [nn.ReLU(inplace=True)]
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim, bias=not last_bn))
    if last_bn:
        layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*layers)


class DINOHead(nn.Module):
    """DINO projection head: MLP -> L2-normalised bottleneck -> weight-normalised prototypes.

    Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021 (Sec. 3.1).
    [B, in_dim] -> [B, out_dim] logits. The prototype layer's weight norm is fixed to 1
    (``norm_last_layer``), which the paper found to stabilise training.
    """

    def __init__(self, in_dim: int, out_dim: int = 1024, hidden_dim: int = 512,
                 bottleneck_dim: int = 128, num_layers: int = 3, batch_norm: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers += [nn.Linear(dim, hidden_dim)]
            layers += [nn.BatchNorm1d(hidden_dim)] if batch_norm else []
            layers += [nn.GELU()]
            dim = hidden_dim
        layers.append(nn.Linear(dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        last = nn.Linear(bottleneck_dim, out_dim, bias=False)
        self.last_layer = nn.utils.parametrizations.weight_norm(last)
        self.last_layer.parametrizations.weight.original0.data.fill_(1.0)  # the norm g
        self.last_layer.parametrizations.weight.original0.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1)
        return self.last_layer(x)
