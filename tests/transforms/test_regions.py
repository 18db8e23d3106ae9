import pytest
import torch

from medssl.transforms.corruptions.base import random_boxes, uniform
from medssl.transforms.corruptions.regions import DISTORTION_TYPES, DISTORTIONS, distort_regions, xyxy_boxes


def batch(dims: int, n: int = 6, size: int = 24) -> torch.Tensor:
    return torch.rand(n, 1, *[size] * dims, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("dims", [2, 3])
def test_same_seed_same_regions(dims):
    x = batch(dims)
    a = distort_regions(x, torch.Generator().manual_seed(3))
    b = distort_regions(x, torch.Generator().manual_seed(3))
    c = distort_regions(x, torch.Generator().manual_seed(4))
    for u, v in zip(a, b, strict=True):
        assert torch.equal(u, v)
    assert not torch.equal(a.input, c.input)


@pytest.mark.parametrize("dims", [2, 3])
def test_boxes_masks_labels_and_target(dims):
    x, size = batch(dims, n=16), 24
    r = distort_regions(x, torch.Generator().manual_seed(0), max_regions=3)
    b, n = r.labels.shape
    assert r.boxes.shape == (b, n, 2 * dims) and r.masks.shape == (b, n, *[size] * dims)
    assert torch.equal(r.target, x)  # restoration target = the original pixels
    assert r.valid[:, 0].all() and (r.valid.sum(1) >= 1).all()
    assert ((r.labels >= 1) == r.valid).all() and (r.labels <= len(DISTORTION_TYPES)).all()
    lo, hi = r.boxes[..., :dims], r.boxes[..., dims:]
    assert (lo[r.valid] >= 0).all() and (hi[r.valid] <= size).all() and (hi[r.valid] > lo[r.valid]).all()
    for i in range(b):
        for j in range(n):
            expect = torch.zeros(*[size] * dims, dtype=torch.bool)
            if r.valid[i, j]:
                expect[tuple(slice(int(lo[i, j, a]), int(hi[i, j, a])) for a in range(dims))] = True
            assert torch.equal(r.masks[i, j], expect)  # the mask is exactly the box
    assert (r.masks.sum(1) <= 1).all()  # kept regions are disjoint
    outside = ~r.masks.any(1, keepdim=True)
    assert torch.equal(r.input[outside], x[outside])  # nothing changes outside the regions
    assert r.input.min() >= 0 and r.input.max() <= 1
    # type map = each region's label inside its box, 0 elsewhere
    expect_map = (r.masks * r.labels.reshape(b, n, *[1] * dims)).sum(1)
    assert torch.equal(r.type_map, expect_map)


def test_labels_name_the_distortion_applied():
    """Replay the generator: each region holds exactly its labelled distortion of the image."""
    x = batch(2, n=8)
    seed, regions = 7, 3
    r = distort_regions(x, torch.Generator().manual_seed(seed), max_regions=regions)
    g = torch.Generator().manual_seed(seed)  # the draws distort_regions makes, in its order
    random_boxes(g, x, regions, 0.15, 0.4)
    uniform(g, (len(x),), x)
    uniform(g, (len(x), regions), x)
    for k, name in enumerate(DISTORTION_TYPES, start=1):
        full = DISTORTIONS[name](x, g)
        inside = (r.type_map == k)[:, None]
        assert torch.equal(r.input[inside], full[inside]), name
    assert set(r.labels[r.valid].tolist()) > {1, 2}  # several types occur in one batch


def test_type_subset_and_errors():
    r = distort_regions(batch(2), torch.Generator().manual_seed(0), types=("cutout",))
    assert set(r.labels[r.valid].tolist()) == {DISTORTION_TYPES.index("cutout") + 1}
    for i, j in r.valid.nonzero().tolist():  # a cut-out region is one constant grey level
        assert r.input[i, 0][r.masks[i, j]].unique().numel() == 1
    with pytest.raises(ValueError, match="unknown distortion types"):
        distort_regions(batch(2), torch.Generator(), types=("swirl",))


def test_xyxy_order():
    assert xyxy_boxes(torch.tensor([[1, 2, 5, 9]])).tolist() == [[2.0, 1.0, 9.0, 5.0]]
