import pytest
import torch

from medssl.cli import main
from medssl.inspection.distortion_viz import _paste, distortion_figure
from medssl.methods import create_method
from medssl.registry import create_backbone


@pytest.mark.parametrize("dims", [2, 3])
def test_dense_figure_2d_and_3d(tmp_path, dims):
    size = 24 if dims == 2 else 16
    backbone = create_backbone("resnet18_small", dims, 1, width=0.125)
    model = create_method("distortion_dense", backbone, dims, size, {}).eval()
    out = distortion_figure(model, torch.rand(2, 1, *[size] * dims), tmp_path / f"d{dims}.png")
    assert out.stat().st_size > 5000 and out.read_bytes()[:4] == b"\x89PNG"


def test_paste_puts_the_patch_inside_its_box_only():
    image = torch.zeros(1, 10, 10)
    out = _paste(image, torch.tensor([[2.0, 3.0, 6.0, 5.0]]), torch.ones(1, 1, 28, 28))
    assert out[0, 3:5, 2:6].eq(1).all() and out.sum() == 8  # x 2..6, y 3..5


def test_cli_rejects_a_non_distortion_run(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("pretrain:\n  method: simclr\n")
    (run / "checkpoint.safetensors").write_bytes(b"")
    assert main(["show-distortions", str(run), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "'simclr' is not a distortion-localisation method" in err
    assert not (tmp_path / "x.png").exists()
