"""medssl export / embed / load_foreign_weights (medssl/export.py): a checked ONNX copy of the encoder,
features files that equal the encoder's output, and another tool's state dict loaded with its key lists."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import medssl
from medssl import export
from medssl.cli import main
from medssl.data.pool import folder_pool, resize_batch
from medssl.errors import MedsslError

TINY = {"backbone": "resnet18_small", "width": 0.125, "epochs": 1, "batch_size": 8, "device": "cpu",
        "precision": "fp32"}


def uint8(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def enc2d(tmp_path_factory) -> Path:
    """A tiny 2D encoder pretrained at 16 px, saved alone (its config in the metadata)."""
    enc = medssl.pretrain(uint8((8, 1, 16, 16), 0), **TINY)
    return enc.save(tmp_path_factory.mktemp("enc") / "enc2d.safetensors")


@pytest.fixture(scope="module")
def enc3d(tmp_path_factory) -> Path:
    enc = medssl.pretrain(uint8((8, 1, 16, 16, 16), 1), **TINY)
    return enc.save(tmp_path_factory.mktemp("enc") / "enc3d.safetensors")


def direct(encoder_file: Path, images: torch.Tensor) -> np.ndarray:
    """The features computed here, by hand: uint8 [N, C, *S] / 255 through the loaded encoder."""
    with torch.no_grad():
        return medssl.load_encoder(encoder_file)(images.float() / 255).numpy()


# --------------------------------------------------------------------------- export + ONNX check


@pytest.mark.parametrize("dims", [2, 3])
def test_onnx_export_matches_pytorch_in_2d_and_3d(dims, enc2d, enc3d, tmp_path):
    files = export.export_encoder(enc2d if dims == 2 else enc3d, tmp_path / "out")
    assert set(files) == {"onnx", "safetensors", "json"} and all(p.is_file() for p in files.values())
    enc = medssl.load_encoder(files["safetensors"])  # the exported weights load alone
    card = json.loads(files["json"].read_text())
    assert card["config"] == {"backbone": "resnet18_small", "width": 0.125, "spatial_dims": dims,
                              "in_channels": 1, "size": 16, "method": "simclr"}
    assert card["num_features"] == enc.num_features == 64 and card["medssl_version"] == medssl.__version__
    assert card["input"]["shape"] == ["B", "C", *["D", "H", "W"][3 - dims:]]
    assert card["input"]["range"] == [0.0, 1.0] and card["input"]["dtype"] == "float32"
    onnx = card["onnx"]
    assert onnx["fixed_input_shape"] == [1] + [16] * dims
    assert onnx["dynamic_axes"] == {"x": [0], "features": [0]}
    assert onnx["check"]["max_abs_diff"] <= export.RTOL * max(1, onnx["check"]["max_abs_torch"])
    for batch in (1, 5):  # the batch dimension is dynamic; the file is plain onnxruntime input
        x = torch.rand(batch, 1, *[16] * dims, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            ref = enc(x).numpy()
        got = export._run_onnx(files["onnx"], x.numpy())
        assert got.shape == (batch, 64)
        assert np.abs(got - ref).max() <= export.RTOL * max(1, np.abs(ref).max())
    print(f"{dims}D max abs diff {onnx['check']['max_abs_diff']:.2e} (max |torch| "
          f"{onnx['check']['max_abs_torch']:.3g}), opset {onnx['opset']}")


def test_the_onnx_check_rejects_a_file_that_does_not_match(enc2d, tmp_path, monkeypatch):
    files = export.export_encoder(enc2d, tmp_path / "ok")
    perturbed = medssl.load_encoder(enc2d)
    with torch.no_grad():
        perturbed.backbone.net.conv1.weight.add_(0.05)  # the ONNX file now holds other weights
    with pytest.raises(MedsslError, match=r"encoder\.onnx: ONNX output differs from PyTorch by up to"):
        export.check_onnx(files["onnx"], perturbed)
    export.check_onnx(files["onnx"], medssl.load_encoder(enc2d))  # the true weights pass
    # a mismatch during export: an error naming the file, and no encoder.onnx (nor a temporary) left
    real = export._run_onnx
    monkeypatch.setattr(export, "_run_onnx", lambda path, x: real(path, x) + 1e-2)
    with pytest.raises(MedsslError, match=r"ok/encoder\.onnx: ONNX output differs .* up to 0\.01"):
        export.export_encoder(enc2d, tmp_path / "ok")  # also removes the earlier export's onnx
    assert sorted(p.name for p in (tmp_path / "ok").iterdir()) == ["encoder.json", "encoder.safetensors"]


def test_export_without_onnx(enc2d, tmp_path):
    files = export.export_encoder(enc2d, tmp_path / "plain", onnx=False)
    assert set(files) == {"safetensors", "json"}
    assert "onnx" not in json.loads(files["json"].read_text())
    assert not (tmp_path / "plain" / "encoder.onnx").exists()


# --------------------------------------------------------------------------- embed


def test_embed_a_medmnist_style_npz_keeps_splits_indices_and_labels(enc2d, tmp_path):
    x = {s: uint8((n, 20, 20), i) for i, (s, n) in enumerate([("train", 5), ("val", 2), ("test", 3)])}
    y = {s: np.arange(len(v))[:, None] % 2 for s, v in x.items()}
    np.savez(tmp_path / "tiny.npz", **{f"{s}_images": v.numpy() for s, v in x.items()},
             **{f"{s}_labels": v for s, v in y.items()})
    out = export.embed(enc2d, tmp_path / "tiny.npz", tmp_path / "f.npy", batch_size=4, device="cpu")
    feats, meta = np.load(out), json.loads((tmp_path / "f.json").read_text())
    images = torch.cat([resize_batch(v[:, None], 16) for v in x.values()])  # 20 px -> the encoder's 16
    np.testing.assert_allclose(feats, direct(enc2d, images), rtol=1e-5, atol=1e-6)
    assert feats.shape == (10, 64) and feats.dtype == np.float32
    assert meta["rows"][:2] == [{"split": "train", "index": 0, "label": 0}, {"split": "train", "index": 1,
                                                                            "label": 1}]
    assert [(r["split"], r["index"]) for r in meta["rows"][5:]] == [("val", 0), ("val", 1), ("test", 0),
                                                                    ("test", 1), ("test", 2)]
    assert meta["size"] == 16 and meta["num_features"] == 64


def test_embed_a_folder_in_natural_order(enc3d, tmp_path):
    import nibabel as nib

    vols = uint8((3, 16, 16, 16), 5)
    (tmp_path / "vols").mkdir()
    for i, v in zip((10, 2, 1), vols, strict=True):  # natural order: 1, 2, 10
        nib.save(nib.Nifti1Image(v.numpy().astype(np.float32), np.eye(4)), tmp_path / "vols" / f"c{i}.nii.gz")
    out = export.embed(enc3d, tmp_path / "vols", tmp_path / "v.npy", device="cpu")
    meta = json.loads(out.with_suffix(".json").read_text())
    assert [r["file"] for r in meta["rows"]] == ["c1.nii.gz", "c2.nii.gz", "c10.nii.gz"]
    expected = direct(enc3d, folder_pool(tmp_path / "vols", 16, storage="memory").images)  # NIfTI scaling
    np.testing.assert_allclose(np.load(out), expected, rtol=1e-5, atol=1e-6)
    c10 = direct(enc3d, expected_input(vols[0]))[0]
    np.testing.assert_allclose(np.load(out)[2], c10, rtol=1e-5, atol=1e-6)


def expected_input(volume: torch.Tensor) -> torch.Tensor:
    """One NIfTI volume as medssl reads it (percentile clip, min-max, uint8) -> [1, 1, D, H, W]."""
    from medssl.data.volume import normalize_intensity, to_uint8

    return torch.from_numpy(to_uint8(normalize_intensity(volume.numpy().astype(np.float32))))[None, None]


def test_embed_a_label_csv_in_csv_order_without_patient_ids(enc2d, tmp_path):
    imgs = uint8((3, 16, 16), 7)
    for i, im in enumerate(imgs):
        Image.fromarray(im.numpy()).save(tmp_path / f"im{i}.png")
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "label", "patient_id"], ["im2.png", 1, "Jane Doe 0042"],
                                 ["im0.png", 0, "John Roe 7"], ["im1.png", 1, "Jane Doe 0042"]])
    out = export.embed(enc2d, tmp_path / "labels.csv", tmp_path / "c.npy", device="cpu")
    rows = json.loads((tmp_path / "c.json").read_text())["rows"]
    assert [(r["file"], r["label"]) for r in rows] == [("im2.png", 1), ("im0.png", 0), ("im1.png", 1)]
    assert rows[0]["group"] == rows[2]["group"] != rows[1]["group"]
    assert rows[0]["group"].startswith("p") and "Doe" not in (tmp_path / "c.json").read_text()
    np.testing.assert_allclose(np.load(out), direct(enc2d, imgs[[2, 0, 1]][:, None]), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- CLI


def test_cli_export_and_embed_run_and_bad_inputs_are_one_line_exit_2(enc2d, tmp_path, capsys):
    assert main(["export", str(enc2d), "--out", str(tmp_path / "e"), "--no-onnx"]) == 0
    assert (tmp_path / "e" / "encoder.json").is_file()
    (tmp_path / "imgs").mkdir()
    for i, im in enumerate(uint8((2, 16, 16), 3)):
        Image.fromarray(im.numpy()).save(tmp_path / "imgs" / f"{i}.png")
    assert main(["embed", str(tmp_path / "e"), str(tmp_path / "imgs"), "--out", str(tmp_path / "f.npy"),
                 "--batch-size", "1"]) == 0
    assert np.load(tmp_path / "f.npy").shape == (2, 64)
    capsys.readouterr()
    bad = {
        "missing encoder": (["export", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path / "x")],
                            "nope.safetensors: encoder not found"),
        "data not found": (["embed", str(enc2d), str(tmp_path / "none"), "--out", str(tmp_path / "g.npy")],
                           "none: data not found"),
        "out is a dir": (["embed", str(enc2d), str(tmp_path / "imgs"), "--out", str(tmp_path / "imgs")],
                         "imgs: is a directory; --out must be a .npy file"),
        "bad extension": (["embed", str(enc2d), str(tmp_path / "imgs"), "--out", str(tmp_path / "g.csv")],
                          "g.csv: unknown extension '.csv'; --out must be a .npy file"),
    }
    for what, (argv, message) in bad.items():
        assert main(argv) == 2, what
        err = capsys.readouterr().err
        assert err.startswith("medssl: error: ") and message in err and err.count("\n") == 1, (what, err)
    assert not (tmp_path / "x").exists() and not (tmp_path / "g.npy").exists()


# --------------------------------------------------------------------------- foreign weights


def test_load_foreign_weights_strips_prefixes_and_lists_missing_and_unexpected(enc2d, capsys):
    source = medssl.load_encoder(enc2d)
    foreign = {f"module.backbone.{k}": v.clone() for k, v in source.backbone.state_dict().items()}
    dropped = next(k for k in source.backbone.state_dict() if k.endswith("conv1.weight"))
    del foreign[f"module.backbone.{dropped}"]
    foreign["module.head.weight"] = torch.zeros(3, 64)
    target = fresh_like(source)
    missing, unexpected = export.load_foreign_weights(target, foreign)
    assert missing == [dropped] and unexpected == ["module.head.weight"]
    out = capsys.readouterr().out
    assert f"1 missing ({dropped}), 1 unexpected (module.head.weight)" in out
    loaded, original = target.backbone.state_dict(), source.backbone.state_dict()
    assert all(torch.equal(loaded[k], original[k]) for k in original if k != dropped)
    assert not torch.equal(loaded[dropped], original[dropped])  # kept its fresh init
    with pytest.raises(MedsslError, match=r"weights do not fit the encoder: 1 missing .* 1 unexpected"):
        export.load_foreign_weights(fresh_like(source), foreign, strict=True)
    assert export.load_foreign_weights(fresh_like(source), dict(source.backbone.state_dict()),
                                       strict=True) == ([], [])


def fresh_like(enc: medssl.Encoder) -> medssl.Encoder:
    """A randomly initialised encoder of the same config."""
    from medssl.config import ModelConfig
    from medssl.studies import build_backbone

    cfg = enc.config
    return medssl.Encoder(build_backbone(ModelConfig(cfg.backbone, cfg.width), cfg.spatial_dims,
                                         cfg.in_channels, cfg.size), cfg)
