import pytest
import torch

from medssl.cli import main
from medssl.config import load_config, save_config
from medssl.engine.checkpoint import save_weights
from medssl.inspection.corruption_grid import DISPLAY, corruption_grid
from medssl.methods import create_method
from medssl.registry import create_backbone

PNG = b"\x89PNG"


@pytest.mark.parametrize("dims,name", [(2, "genesis"), (3, "denoising"), (2, "mae")])
def test_grid_png_with_a_restorer(tmp_path, dims, name):
    size = 8 if dims == 3 and name == "mae" else (20 if dims == 3 else 16)
    net = create_backbone("vit_tiny" if name == "mae" else "resnet10" if dims == 3 else "resnet18_small",
                          dims, 1, width=0.125, img_size=size)
    model = create_method(name, net, dims, size, {}).eval()
    out = corruption_grid(torch.rand(2, 1, *[size] * dims), ["inpaint", "noise"], tmp_path / "g.png",
                          restorer=model, label=name)
    assert out.read_bytes()[:4] == PNG


def test_every_corruption_in_one_grid(tmp_path):
    out = corruption_grid(torch.rand(2, 3, 16, 16), list(DISPLAY), tmp_path / "all.png")
    assert out.read_bytes()[:4] == PNG


def test_cli_writes_the_grid_from_real_data_and_a_run(tmp_path, data_dir):
    run = tmp_path / "run"
    run.mkdir()
    cfg = load_config(None, ["pretrain.method=genesis", "model.width=0.125"])
    save_config(cfg, run / "config.yaml")
    model = create_method("genesis", create_backbone("resnet18_small", 2, 1, width=0.125), 2, 28, {})
    save_weights(model, run / "checkpoint.safetensors")
    out = tmp_path / "grid.png"
    assert main(["show-corruptions", "--dataset", "breastmnist", "--n", "2", "--out", str(out),
                 "--checkpoint", str(run)]) == 0
    assert out.read_bytes()[:4] == PNG
    assert main(["show-corruptions", "--checkpoint", str(run / "encoder.safetensors"),
                 "--out", str(out)]) == 2
    assert main(["show-corruptions", "--corruptions", "nope", "--out", str(out)]) == 2
