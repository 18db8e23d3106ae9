"""Tiny method builders: 1/8-width CNNs (or a 1/4-width ViT) on 16-px images / 16^3 volumes."""

import torch

from medssl.methods import create_method
from medssl.registry import create_backbone

SIZE = 16
BACKBONES = {2: "resnet18_small", 3: "resnet10"}
TINY_ARGS = {  # the joint-embedding methods; small heads keep the tests fast
    "simclr": {"proj_hidden_dim": 32, "proj_dim": 16},
    "moco_v2": {"proj_hidden_dim": 32, "proj_dim": 16, "queue_size": 20},
    "moco_v3": {"proj_hidden_dim": 32, "proj_dim": 16, "pred_hidden_dim": 32},
    "byol": {"proj_hidden_dim": 32, "proj_dim": 16, "pred_hidden_dim": 32},
    "simsiam": {"proj_hidden_dim": 32, "proj_dim": 32, "pred_hidden_dim": 8},
    "barlow_twins": {"proj_hidden_dim": 32, "proj_dim": 32},
    "vicreg": {"proj_hidden_dim": 32, "proj_dim": 32},
    "dino": {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16},
}

JOINT_EMBEDDING = sorted(TINY_ARGS)


def tiny_method(name, spatial_dims=2, backbone=None, size=SIZE, **overrides):
    """``name`` on a tiny backbone; the joint-embedding methods with small heads, the others with
    their defaults (``overrides`` on top)."""
    backbone = backbone or BACKBONES[spatial_dims]
    width = 0.25 if backbone.startswith("vit") else 0.125
    net = create_backbone(backbone, spatial_dims, 1, width=width, img_size=size)
    return create_method(name, net, spatial_dims, size, {**TINY_ARGS.get(name, {}), **overrides})


def tiny_batch(spatial_dims=2, n=8):
    return {"image": torch.rand(n, 1, *[SIZE] * spatial_dims)}
