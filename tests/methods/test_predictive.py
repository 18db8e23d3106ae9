import pytest
import torch
from bf16_grads import check_bf16_step

from medssl.engine.checkpoint import load_weights, save_weights
from medssl.errors import MedsslError
from medssl.methods import create_method
from medssl.registry import create_backbone

PREDICTIVE = ["rotation", "jigsaw", "relative_location", "rubik"]
BF16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()


def tiny(name: str, dims: int = 2, size: int = 16, **args):
    backbone = create_backbone("resnet18_small" if dims == 2 else "resnet10", dims, 1, width=0.125)
    return create_method(name, backbone, dims, size, args), backbone


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", PREDICTIVE)
def test_one_step_trains_the_shared_backbone(name, dims):
    model, backbone = tiny(name, dims)
    out = model.training_step({"image": torch.rand(4, 1, *[16] * dims)})
    out["loss"].backward()
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    assert all(0 <= float(v) <= 1 for k, v in out.items() if "acc" in k)
    assert all(p.grad is not None for p in backbone.parameters())
    assert model.backbone is backbone


@pytest.mark.parametrize("name,dims,classes", [("rotation", 2, 4), ("rotation", 3, 10),
                                               ("relative_location", 2, 8), ("relative_location", 3, 26)])
def test_number_of_classes(name, dims, classes):
    model, _ = tiny(name, dims)
    assert model.head[-1].out_features == classes


@pytest.mark.parametrize("name,dims,count", [("jigsaw", 2, 24), ("jigsaw", 3, 100), ("rubik", 3, 100),
                                             ("rubik", 2, 24)])
def test_permutation_set_is_fixed_by_its_own_seed_and_saved(name, dims, count, tmp_path):
    torch.manual_seed(1)
    a, _ = tiny(name, dims)
    torch.manual_seed(2)
    b, _ = tiny(name, dims)
    assert a.permutations.shape == (count, 2 ** dims)
    assert torch.equal(a.permutations, b.permutations)  # independent of the run's seed
    save_weights(a, tmp_path / "m.safetensors")
    assert torch.equal(load_weights(tmp_path / "m.safetensors")["permutations"], a.permutations)
    c, _ = tiny(name, dims, permutation_seed=5)
    assert not torch.equal(a.permutations, c.permutations)


def test_rubik_labels_and_optional_masking():
    model, _ = tiny("rubik", 3, mask_p=0.5)
    x = torch.rand(4, 1, 16, 16, 16)
    cubes, labels = model.scramble(x)
    assert cubes.shape == (32, 1, 7, 7, 7)
    assert labels["turn"].max() < 4 and labels["order"].max() < 100
    assert 0 < labels["masked"].sum() < 32
    out = model.training_step({"image": x})
    assert {"loss/order", "loss/turn", "loss/mask"} <= set(out)
    assert torch.allclose(out["loss"], out["loss/order"] + out["loss/turn"] + out["loss/mask"])


def test_rubik_without_masking_leaves_cube_content_alone():
    model, _ = tiny("rubik", 2, crop_frac=1.0)
    x = torch.rand(2, 1, 16, 16)
    cubes, labels = model.scramble(x)
    for b in range(2):
        perm = model.permutations[labels["order"][b]]
        for i in range(4):
            cube = cubes[4 * b + i]
            cube = cube.flip(1, 2) if labels["turn"][4 * b + i] else cube
            row, col = divmod(int(perm[i]), 2)
            assert torch.equal(cube, x[b, :, 8 * row:8 * row + 8, 8 * col:8 * col + 8])


def test_jigsaw_grid_must_fit_the_permutation_search():
    with pytest.raises(MedsslError, match="grid"):
        tiny("jigsaw", 3, grid=3)
    model, _ = tiny("jigsaw", 2, grid=3, num_permutations=30)
    assert model.permutations.shape == (30, 9)


def test_rotation_needs_square_inputs():
    model, _ = tiny("rotation", 2, augment=False)
    with pytest.raises(MedsslError, match="square"):
        model.training_step({"image": torch.rand(4, 1, 16, 12)})


@pytest.mark.skipif(not BF16, reason="no native bf16 on this CPU")
@pytest.mark.parametrize("dims,size,width", [(2, 16, 0.125), (3, 28, 0.25)])
@pytest.mark.parametrize("name", PREDICTIVE)
def test_bf16_gradients_match_fp32(name, dims, size, width):
    """bf16 step against fp32 on the same tiles, small convs against float64 (bf16_grads.py). 3D at
    28^3 with resnet10, as the AdrenalMNIST3D runs: relative location's 7^3 tiles (7x7x7/2 stem on
    7^3, layer1 on 2^3), jigsaw and rubik's 12^3 cubes (layer2 on 2^3, layer4 on 1^3), rotation's
    whole volume (layer3 on 2^3): every one of oneDNN's wrong sizes."""
    backbone = create_backbone("resnet18_small" if dims == 2 else "resnet10", dims, 1, width=width)
    model = create_method(name, backbone, dims, size, {})
    x = torch.rand(4, 1, *[size] * dims)
    check_bf16_step(model, lambda: model.training_step({"image": x})["loss"], hits_the_bug=dims == 3)
