"""Behaviour specific to one method: MoCo v2's queue, DINO's multi-crop, centering and schedule."""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from joint_fixtures import tiny_batch, tiny_method


def _moco_step(model, batch):
    """One training step; returns (loss, queries [2B, D], keys [2B, D], queue before, pointer before)."""
    seen = {}
    hooks = [getattr(model, name).register_forward_hook(lambda m, i, o, name=name: seen.update({name: o}))
             for name in ("projector", "momentum_projector")]
    queue, ptr = model.queue.clone(), int(model.queue_ptr)
    loss = model.training_step(batch)["loss"]
    for h in hooks:
        h.remove()
    return loss, seen["projector"], seen["momentum_projector"].detach(), queue, ptr


def naive_infonce(q, k, queue, t):
    """-log softmax of the positive against the queue, row by row."""
    q, k = F.normalize(q.double(), dim=1), F.normalize(k.double(), dim=1)
    losses = []
    for qi, ki in zip(q, k, strict=True):
        logits = torch.cat([(qi @ ki)[None], queue.double() @ qi]) / t
        losses.append(torch.logsumexp(logits, 0) - logits[0])
    return torch.stack(losses).mean()


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("symmetric", [True, False])
def test_moco_v2_enqueues_k2_after_a_loss_against_the_old_queue(symmetric, spatial_dims):
    model = tiny_method("moco_v2", spatial_dims, queue_size=10, symmetric=symmetric)
    b, t = 6, model.cfg.temperature
    for _ in range(2):  # pointer 0, then 6: the second step wraps around the ring of 10
        loss, q, k, before, ptr = _moco_step(model, tiny_batch(spatial_dims, n=b))
        (q1, q2), (k1, k2) = q.detach().chunk(2), k.chunk(2)
        expected = naive_infonce(q1, k2, before, t)
        if symmetric:
            expected = (expected + naive_infonce(q2, k1, before, t)) / 2
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
        loss.backward()  # the graph still holds the queue it used (no in-place change since)
        rows = [(ptr + i) % 10 for i in range(b)]
        assert torch.allclose(model.queue[rows], F.normalize(k2, dim=1), atol=1e-6)
        untouched = [i for i in range(10) if i not in rows]
        assert torch.equal(model.queue[untouched], before[untouched])
        assert int(model.queue_ptr) == (ptr + b) % 10
        model.zero_grad()


def test_moco_v3_can_freeze_the_vit_patch_projection():
    model = tiny_method("moco_v3", 2, backbone="vit_tiny", freeze_patch_embed=True)
    assert not any(p.requires_grad for p in model.backbone.patch_embed.parameters())
    model.training_step(tiny_batch(2))["loss"].backward()


@pytest.mark.parametrize("spatial_dims,backbone,local", [(2, "resnet18_small", 7), (3, "resnet18_small", 7),
                                                         (2, "vit_tiny", 7), (3, "resnet10", 16)])
def test_dino_multi_crop_feeds_local_crops_to_the_student(spatial_dims, backbone, local):
    model = tiny_method("dino", spatial_dims, backbone=backbone, local_crops=2)
    assert model.local_augment.size == local  # 3/7 of 16, unless the CNN's layer4 would see 1 px
    seen = []
    hook = model.backbone.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    out = model.training_step(tiny_batch(spatial_dims))
    hook.remove()
    assert seen == [(16, 1, *[16] * spatial_dims), (16, 1, *[local] * spatial_dims)]
    out["loss"].backward()
    assert math.isfinite(out["loss"].item())


def test_dino_local_crops_of_28_cubed_volumes_keep_resnet10_layer4_input_above_one_voxel():
    from medssl.methods.dino import _local_size
    from medssl.registry import create_backbone

    net = create_backbone("resnet10", 3, 1, width=0.125).eval()
    assert _local_size(net, 3, 28, 3 / 7) == 17  # 12 -> layer4 input 1^3; 17 -> 2^3
    assert net.stages(torch.zeros(1, 1, 17, 17, 17))[-2].shape[-1] == 2
    assert _local_size(create_backbone("resnet18_small", 2, 1, width=0.125), 2, 28, 3 / 7) == 12


def test_dino_center_and_teacher_temperature_follow_their_schedules():
    model = tiny_method("dino", 2, teacher_temp_warmup=0.5)
    assert model.teacher_temp() == pytest.approx(0.04)
    batch = tiny_batch(2)
    with torch.no_grad():
        teacher = model.teacher_head(model.teacher_backbone(torch.cat([batch["image"]] * 2)))
    assert torch.equal(model.center, torch.zeros_like(model.center))
    model.training_step(batch)
    assert model.center.abs().sum() > 0  # moved towards the teacher's mean logits
    assert model.center.abs().max() <= teacher.abs().max()
    model.after_step(4, 20)  # a quarter of training: half-way through the warm-up
    assert model.teacher_temp() == pytest.approx(0.04 + 0.03 * 0.5)
    model.after_step(19, 20)
    assert model.teacher_temp() == pytest.approx(0.07)


def test_dino_prototype_layer_has_unit_norm_rows_and_the_norm_is_not_trained():
    model = tiny_method("dino", 2)
    w = model.head.last_layer.weight
    assert torch.allclose(w.norm(dim=1), torch.ones(len(w)), atol=1e-5)
    g = model.head.last_layer.parametrizations.weight.original0
    assert not g.requires_grad


@pytest.mark.parametrize("dims,size", [(2, 24), (3, 21)])
def test_relative_location_labels_name_the_neighbours_actual_position(dims, size, monkeypatch):
    from medssl.methods import create_method, relative_location
    from medssl.registry import create_backbone

    backbone = create_backbone("resnet18_small" if dims == 2 else "resnet10", dims, 1, width=0.125)
    model = create_method("relative_location", backbone, dims, size, {"augment": False})
    cell = size // 3
    grid = torch.arange(3 ** dims, dtype=torch.float32).reshape([3] * dims)  # cell index, row-major
    for axis in range(dims):
        grid = grid.repeat_interleave(cell, axis)
    x = (grid / 100).expand(12, 1, *[size] * dims).contiguous()  # every tile is one constant value
    seen, labels = [], []
    model.backbone.register_forward_pre_hook(lambda m, i: seen.append(i[0]))
    logs = relative_location.classification_logs
    monkeypatch.setattr(relative_location, "classification_logs",
                        lambda logits, y: labels.append(y) or logs(logits, y))
    model.training_step({"image": x})
    centre, other = seen[0].chunk(2)
    offsets = [o for o in itertools.product((-1, 0, 1), repeat=dims) if any(o)]  # row-major order
    for b in range(len(x)):
        assert centre[b].unique().tolist() == [pytest.approx((3 ** dims // 2) / 100)]
        [value] = other[b].unique().tolist()
        position = np.unravel_index(round(value * 100), [3] * dims)
        offset = tuple(int(p) - 1 for p in position)
        assert offsets[int(labels[0][b])] == offset
    assert len(set(labels[0].tolist())) > 1


def test_rubik_3d_cubes_are_the_permuted_cells_turned_by_their_label():
    from medssl.methods import create_method
    from medssl.registry import create_backbone

    model = create_method("rubik", create_backbone("resnet10", 3, 1, width=0.125), 3, 16,
                          {"crop_frac": 1.0, "augment": False})
    x = torch.rand(3, 2, 16, 16, 16)
    cubes, labels = model.scramble(x)
    assert labels["turn"].unique().numel() > 1
    for b in range(3):
        perm = model.permutations[labels["order"][b]]
        for i in range(8):
            turn = int(labels["turn"][8 * b + i])  # 0: none; 1 + a: 180 degrees about axis a
            cube = cubes[8 * b + i]
            if turn:
                cube = cube.flip([d for d in (1, 2, 3) if d != turn])  # the turn flips the other two axes
            z, y, w = np.unravel_index(int(perm[i]), (2, 2, 2))
            assert torch.equal(cube, x[b, :, 8 * z:8 * z + 8, 8 * y:8 * y + 8, 8 * w:8 * w + 8])
