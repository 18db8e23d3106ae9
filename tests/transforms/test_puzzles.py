import itertools

import pytest
import torch

from medssl.transforms.puzzles import (
    grid_tiles,
    half_turn,
    hamming_permutations,
    num_rotations,
    rotate,
    shuffle_tiles,
)


@pytest.mark.parametrize("n,count", [(4, 100), (8, 100)])
def test_permutation_sets_are_valid_distinct_and_seeded(n, count):
    perms = hamming_permutations(n, count, seed=3)
    assert perms.shape == (min(count, 24 if n == 4 else count), n)
    assert all(sorted(p) == list(range(n)) for p in perms.tolist())
    assert len({tuple(p) for p in perms.tolist()}) == len(perms)
    assert torch.equal(perms, hamming_permutations(n, count, seed=3))
    assert not torch.equal(perms, hamming_permutations(n, count, seed=4))


def test_permutation_set_spreads_out():
    perms = hamming_permutations(8, 50)
    dist = (perms[:, None] != perms[None]).sum(-1)
    dist.fill_diagonal_(8)
    assert dist.min() >= 5  # a random set of 50 of 8! has pairs at distance 2


def test_2d_rotations_are_rot90():
    x = torch.rand(4, 1, 6, 6)
    labels = torch.tensor([0, 1, 2, 3])
    out = rotate(x, labels)
    for i in range(4):
        assert torch.equal(out[i], torch.rot90(x[i], i, dims=(1, 2)))


def test_3d_rotation_classes_are_all_different_and_keep_values():
    x = torch.rand(1, 1, 5, 5, 5).expand(10, -1, -1, -1, -1)
    out = rotate(x, torch.arange(10))
    assert num_rotations(3) == 10
    assert len({tuple(o.flatten().tolist()) for o in out}) == 10
    assert torch.equal(out.flatten(1).sort(1).values, x.flatten(1).sort(1).values)


def test_half_turns_are_a_group_of_involutions():
    x = torch.rand(4, 1, 4, 5, 6)
    labels = torch.arange(4)
    turned = half_turn(x, labels)
    assert torch.equal(half_turn(turned, labels), x)
    assert len({tuple(t.flatten().tolist()) for t in turned}) == 4
    assert torch.equal(half_turn(x[:2, :, 0], torch.tensor([0, 1]))[1], x[1, :, 0].flip(1, 2))


@pytest.mark.parametrize("dims", [2, 3])
def test_grid_tiles_are_crops_of_their_cells(dims):
    x = torch.arange(2 * 12 ** dims, dtype=torch.float).reshape(2, 1, *[12] * dims)
    tiles = grid_tiles(x, 2, 0.5, torch.Generator().manual_seed(0))
    assert tiles.shape == (2, 2 ** dims, 1, *[3] * dims)
    for t, cell in enumerate(itertools.product(range(2), repeat=dims)):
        first = tiles[1, t, 0].flatten()[0].long().item()
        coords = torch.nonzero(x[1, 0] == first)[0]
        for axis, c in enumerate(cell):
            assert 6 * c <= coords[axis] <= 6 * c + 3
        where = tuple(slice(int(v), int(v) + 3) for v in coords)
        assert torch.equal(tiles[1, t, 0], x[1, 0][where])


def test_shuffle_tiles_follow_the_labelled_permutation():
    tiles = torch.arange(3 * 4, dtype=torch.float).reshape(3, 4, 1)
    perms = hamming_permutations(4, 24)
    out, labels = shuffle_tiles(tiles, perms, torch.Generator().manual_seed(0))
    for b in range(3):
        assert torch.equal(out[b, :, 0], tiles[b, perms[labels[b]], 0])
