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
