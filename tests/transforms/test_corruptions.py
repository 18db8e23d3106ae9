import math
from math import comb

import numpy as np
import pytest
import torch

from medssl.transforms import corruptions as C
from medssl.transforms.corruptions.base import box_mask
from medssl.transforms.corruptions.noise import blur

SHAPES = {2: (6, 2, 16, 16), 3: (4, 1, 12, 12, 12)}
FORCED = {  # every corruption applied to every sample
    "nonlinear": lambda x, g: C.nonlinear_intensity(x, g, p=1.0),
    "local_shuffle": lambda x, g: C.local_pixel_shuffle(x, g, p=1.0),
    "inpaint": C.inpaint,
    "outpaint": C.outpaint,
    "paint": lambda x, g: C.paint(x, g, p=1.0),
    "genesis": lambda x, g: C.models_genesis(x, g, 1.0, 1.0, 1.0),
    "context_swap": C.context_swap,
    "noise": C.gaussian_noise,
    "blur": C.gaussian_blur,
    "mae_mask": C.random_patch_mask,
}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def image(dims: int) -> torch.Tensor:
    return torch.rand(SHAPES[dims])


def test_every_registered_corruption_is_covered():
    assert set(FORCED) == set(C.CORRUPTIONS)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", sorted(FORCED))
def test_deterministic_changes_input_keeps_range_and_target(name, dims):
    x = image(dims)
    a, b = FORCED[name](x, gen(1)), FORCED[name](x, gen(1))
    assert torch.equal(a.input, b.input)
    assert all(torch.equal(a.meta[k], b.meta[k]) for k in a.meta)
    assert a.input.shape == x.shape and a.input.dtype == x.dtype
    assert a.input.min() >= 0 and a.input.max() <= 1
    assert torch.equal(a.target, x)
    for i in range(len(x)):  # every sample is changed
        assert not torch.equal(a.input[i], x[i]), f"{name}: sample {i} unchanged"
    assert not torch.equal(a.input, FORCED[name](x, gen(2)).input)  # another seed, another draw


@pytest.mark.parametrize("dims", [2, 3])
def test_inpainting_changes_only_inside_its_region(dims):
    x = image(dims)
    c = C.inpaint(x, gen())
    region = c.meta["region"].expand_as(x)
    assert region.flatten(1).any(1).all()  # at least one hole per sample
    assert torch.equal(c.input[~region], x[~region])
    assert (c.input[region] != x[region]).float().mean() > 0.9


@pytest.mark.parametrize("dims", [2, 3])
def test_outpainting_keeps_the_boxes_and_fills_the_rest(dims):
    x = image(dims)
    c = C.outpaint(x, gen())
    region = c.meta["region"].expand_as(x)
    assert torch.equal(c.input[~region], x[~region])
    assert (c.input[region] != x[region]).float().mean() > 0.9
    assert 0.05 < region.float().mean() < 0.95


@pytest.mark.parametrize("fn", [C.local_pixel_shuffle, C.context_swap])
@pytest.mark.parametrize("dims", [2, 3])
def test_shuffles_only_move_values_inside_their_region(fn, dims):
    x = image(dims)
    c = fn(x, gen(), p=1.0) if fn is C.local_pixel_shuffle else fn(x, gen())
    region = c.meta["region"].expand_as(x)
    assert torch.equal(c.input[~region], x[~region])
    for i in range(len(x)):  # per sample and channel the same multiset of values
        assert torch.equal(c.input[i].flatten(1).sort(1).values, x[i].flatten(1).sort(1).values)


def test_local_shuffle_moves_channels_together():
    x = torch.rand(2, 1, 16, 16).expand(2, 3, 16, 16).contiguous()
    c = C.local_pixel_shuffle(x, gen(), p=1.0)
    assert torch.equal(c.input[:, 0], c.input[:, 2])


def test_probabilities_zero_leave_the_batch_unchanged():
    x = image(2)
    g = gen()
    assert torch.equal(C.models_genesis(x, g, 0.0, 0.0, 0.0).input, x)
    assert torch.equal(C.gaussian_noise(x, g, p=0.0).input, x)
    assert not C.local_pixel_shuffle(x, g, p=0.0).meta["region"].any()


def test_models_genesis_defaults_are_the_papers():
    import inspect
    params = inspect.signature(C.models_genesis).parameters
    assert [params[k].default for k in ("nonlinear_p", "shuffle_p", "paint_p", "inpaint_rate")] == [
        0.9, 0.5, 0.9, 0.2]
    x = torch.rand(400, 1, 8, 8)
    meta = C.models_genesis(x, gen()).meta
    for key, p in (("nonlinear", 0.9), ("shuffled", 0.5), ("painted", 0.9), ("inpainted", 0.9 * 0.2)):
        assert abs(meta[key].float().mean() - p) < 0.08, key


def test_paint_leaves_unpainted_samples_alone():
    x = image(2)
    c = C.paint(x, gen(3), p=0.5)
    applied = c.meta["applied"]
    assert 0 < applied.sum() < len(x)  # this seed paints some samples and not others
    assert torch.equal(c.input[~applied], x[~applied])
    assert not c.meta["region"][~applied].any()


def test_nonlinear_is_a_per_sample_function_of_intensity():
    levels = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    x = levels[torch.randint(0, 5, (8, 1, 10, 10))]
    y = C.nonlinear_intensity(x, gen(), p=1.0).input
    for i in range(len(x)):
        for v in levels:
            out = y[i][x[i] == v]
            assert out.numel() == 0 or torch.allclose(out, out[0].expand_as(out))


def test_blur_keeps_constants_and_the_mean():
    x = torch.full((2, 1, 9, 9, 9), 0.3)
    assert torch.allclose(blur(x, torch.tensor([0.7, 1.5]), 5), x)
    y = torch.rand(3, 1, 32, 32)
    assert torch.allclose(blur(y, torch.full((3,), 1.0), 3).mean(), y.mean(), atol=0.02)


@pytest.mark.parametrize("dims,patch", [(2, 4), (3, 4), (2, 8)])
def test_mae_mask_counts_and_display(dims, patch):
    x = torch.rand(3, 2, *[16] * dims)
    c = C.random_patch_mask(x, gen(), patch_size=patch, mask_ratio=0.75)
    n = (16 // patch) ** dims
    keep = round(n * 0.25)
    assert (c.meta["mask"].sum(1) == n - keep).all()
    kept = torch.zeros_like(c.meta["mask"]).scatter(1, c.meta["ids_keep"], True)
    assert torch.equal(kept, ~c.meta["mask"])
    patches, shown = C.patchify(x, patch), C.patchify(c.input, patch)
    assert torch.equal(shown[~c.meta["mask"]], patches[~c.meta["mask"]])
    assert (shown[c.meta["mask"]] == 0.5).all()
    assert torch.equal(C.unpatchify(patches, patch, 2, (16 // patch,) * dims), x)


def test_patchify_matches_a_conv_patch_embedding_order():
    x = torch.rand(2, 1, 8, 8)
    conv = torch.nn.Conv2d(1, 1, 4, stride=4, bias=False)
    torch.nn.init.ones_(conv.weight)
    assert torch.allclose(conv(x).flatten(2)[:, 0], C.patchify(x, 4).sum(-1), atol=1e-5)


def test_box_mask_marks_exactly_the_box():
    mask = box_mask(torch.tensor([[[1, 2]]]), torch.tensor([[[2, 3]]]), (5, 6))
    expected = torch.zeros(1, 1, 5, 6, dtype=torch.bool)
    expected[..., 1:3, 2:5] = True
    assert torch.equal(mask, expected)


def genesis_bezier(points, n_times=100_000):
    """The Models Genesis reference curve (``utils.py``: Bernstein basis, points[0] at t = 1)."""
    t = np.linspace(0.0, 1.0, n_times)
    basis = np.array([comb(3, i) * t ** (3 - i) * (1 - t) ** i for i in range(4)])
    pts = np.array(points, dtype=float)
    return pts[:, 0] @ basis, pts[:, 1] @ basis


@pytest.mark.parametrize("dims", [2, 3])
def test_nonlinear_matches_the_reference_bezier_curve(dims, monkeypatch):
    from medssl.transforms.corruptions import genesis

    drawn = []  # every uniform draw of nonlinear_intensity; the first holds the control points
    monkeypatch.setattr(genesis, "uniform", lambda *a: drawn.append(C.base.uniform(*a)) or drawn[-1])
    shape = (16, 1, 10, 10) if dims == 2 else (16, 1, 5, 5, 4)
    x = torch.linspace(0, 1, math.prod(shape[2:])).reshape(1, 1, *shape[2:]).repeat(16, 1, *[1] * dims)
    y = C.nonlinear_intensity(x, gen(4), p=1.0).input.flatten(1).numpy()
    ctrl = drawn[0].numpy()  # [B, 2 inner points, (x, y)]
    inverted = []
    for b in range(len(x)):
        xs, ys = genesis_bezier([[0, 0], ctrl[b, 0], ctrl[b, 1], [1, 1]])
        inverted.append(bool(y[b, 0] > 0.5))
        ref = np.interp(x[b].flatten().numpy(), np.sort(xs), ys if inverted[-1] else np.sort(ys))
        assert np.abs(y[b] - ref).max() < 0.01, b
        ends = (1.0, 0.0) if inverted[-1] else (0.0, 1.0)  # 0 -> 0 and 1 -> 1, or inverted
        assert (y[b, 0], y[b, -1]) == pytest.approx(ends, abs=1e-6)
        if not inverted[-1]:
            assert (np.diff(y[b]) >= 0).all()  # monotone
    assert 0 < sum(inverted) < len(x)  # both halves of the reference occur


@pytest.mark.parametrize("shape,frac", [((2, 2, 40, 30), 0.1), ((2, 2, 12, 16, 20), 0.2)])
def test_local_shuffle_moves_each_pixel_only_inside_its_block(shape, frac, monkeypatch):
    from medssl.transforms.corruptions import genesis

    rounds = []

    def spy(x, generator, sides, offsets, cell_p):
        out, region = shuffle(x, generator, sides, offsets, cell_p)
        rounds.append((x, sides, offsets, out, region))
        return out, region

    shuffle = genesis._shuffle_blocks
    monkeypatch.setattr(genesis, "_shuffle_blocks", spy)
    x = (torch.randperm(math.prod(shape)).float() / math.prod(shape)).reshape(shape)  # unique values
    c = C.local_pixel_shuffle(x, gen(5), p=1.0, max_block_frac=frac)
    assert len(rounds) == 3 and torch.equal(c.input, rounds[-1][3])
    moved_any = False
    for inp, sides, offsets, out, region in rounds:
        for n, side in zip(shape[2:], sides, strict=True):
            assert 2 <= side <= max(2, round(n * frac))  # block side within max_block_frac
        values, order = inp.flatten().sort()
        src = np.array(np.unravel_index(order[torch.searchsorted(values, out.flatten())].numpy(), shape))
        dst = np.array(np.unravel_index(np.arange(out.numel()), shape))
        moved = (src != dst).any(0)
        moved_any |= moved.any()
        assert (src[:2] == dst[:2]).all()  # same sample, same channel
        for axis, (side, off) in enumerate(zip(sides, offsets, strict=True)):
            s, d = src[2 + axis][moved] - off, dst[2 + axis][moved] - off
            assert (d >= 0).all() and (s // side == d // side).all()  # the same block along this axis
        assert region.expand(shape).flatten().numpy()[moved].all()
    assert moved_any


@pytest.mark.parametrize("fn,law", [(C.inpaint, (1 / 6, 1 / 3)), (C.outpaint, (3 / 7, 4 / 7))])
@pytest.mark.parametrize("shape", [(400, 1, 42, 35), (100, 1, 21, 28, 42)])
def test_painting_box_sizes_counts_and_noise_follow_the_reference_laws(fn, law, shape, monkeypatch):
    from medssl.transforms.corruptions import painting

    boxes, mask = [], painting.box_mask  # record the boxes the painting asks for
    monkeypatch.setattr(painting, "box_mask", lambda lo, n, s: boxes.append((lo, n)) or mask(lo, n, s))
    c = fn(torch.zeros(shape), gen(6))
    [(lo, size)] = boxes
    present = (size > 0).all(-1)  # [B, 5]
    assert torch.equal(present, (size > 0).any(-1)) and present[:, 0].all()  # a box has all sides or none
    assert (present.int().diff(dim=1) <= 0).all()  # box k exists only if box k - 1 does
    # each further box exists with probability 0.95: mean count 1 + .95 + .95^2 + .95^3 + .95^4
    assert present.sum(1).float().mean() == pytest.approx(sum(0.95 ** k for k in range(5)), abs=0.15)
    for axis, n in enumerate(shape[2:]):
        sides, starts = size[..., axis][present], lo[..., axis][present]
        assert sides.min() == math.floor(n * law[0]) and sides.max() == math.floor(n * law[1])
        assert (starts >= 3).all() and (starts + sides <= n - 3).all()  # 3-voxel margin, as in utils.py
    region = c.meta["region"].expand(shape)
    noise = c.input[region]
    assert torch.equal(region, c.input > 0)  # zeros stay outside; inside, U(0, 1) noise
    assert noise.mean() == pytest.approx(0.5, abs=0.01) and noise.std() == pytest.approx(12 ** -0.5, abs=0.01)
