"""Segmentation studies: real-data loaders, tiny end-to-end runs (3D Hippocampus, 2D ISBI) and the
CLI's one-line errors for bad folders (nothing written)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from medssl.cli import main
from medssl.config import load_config
from medssl.data.splits import assert_disjoint_groups
from medssl.studies.segmentation import load_checked as validate_segmentation

TINY = ["model.width=0.125", "pretrain.epochs=1", "pretrain.batch_size=8", "finetune.epochs=1",
        "finetune.min_steps=2", "finetune.batch_size=4", "finetune.seeds=[0]", "engine.precision=fp32",
        "segmentation.val_checks=1", "segmentation.overlays=1"]
TINY_3D = [*TINY, "model.backbone=resnet10", "data.size=16", "segmentation.max_cases=10",
           "segmentation.crop=[32,32,32]", "segmentation.sw_roi=[48,64,48]", "segmentation.val_fraction=0.25"]
TINY_2D = [*TINY, "model.backbone=resnet18", "data.size=64", "pretrain.batch_size=128",
           "segmentation.max_cases=10", "segmentation.unlabelled=null", "segmentation.group_size=1",
           "segmentation.crop=[32,32]", "segmentation.sw_roi=[256,256]", "segmentation.val_fraction=0.25",
           "finetune.fractions=[1.0]"]


def _args(config, tmp_path, name, sets):
    sets = [f"output_dir={tmp_path}", f"name={name}", *sets]
    return ["study", config, *[a for s in sets for a in ("--set", s)]]


def test_real_hippocampus_loader(data_dir):
    data = validate_segmentation(load_config("configs/hippocampus.yaml", ["segmentation.max_cases=12"]))
    assert data.spatial_dims == 3 and data.num_classes == 3 and len(data) == 12
    assert "hippocampus_003" in data.cases  # float32 image and float32 label on disk
    for image, label in zip(data.images, data.labels, strict=True):
        assert image.dtype == np.uint8 and label.dtype == np.uint8 and image.shape == label.shape
        assert image.min() == 0 and image.max() == 255 and set(np.unique(label)) == {0, 1, 2}
    assert data.spacings[0] == (1.0, 1.0, 1.0) and data.groups == data.cases
    pool = data.pretrain_data().images
    assert pool.shape == (12, 1, 48, 64, 48)


def test_real_isbi_loader(data_dir):
    data = validate_segmentation(load_config("configs/isbi2012.yaml"))
    assert data.spatial_dims == 2 and len(data) == 30 and len(data.unlabelled) == 30
    assert data.images[0].shape == (512, 512) and data.shape == (512, 512)
    membrane = np.mean([lab.mean() for lab in data.labels])
    assert 0.15 < membrane < 0.3  # ~22% membrane (class 1 = stored value 0)
    assert data.groups[:4] == ["0", "0", "0", "3"]  # blocks of 3 neighbouring slices
    assert data.pretrain_data().images.shape == (60 * 64, 1, 64, 64)


def _rows(run):
    return [json.loads(x) for x in (run / "results.jsonl").read_text().splitlines()]


def _check_rows(rows, n, classes):
    seg = [r for r in rows if r["protocol"] == "segmentation"]
    assert len(seg) == n
    for r in seg:
        for c in [*classes, "mean"]:
            assert math.isfinite(r[f"dice_{c}"]) and 0 <= r[f"dice_{c}"] <= 1, r
            assert 0 <= r[f"iou_{c}"] <= 1 and r[f"hd95_{c}"] >= 0
        assert (r["encoder_tensors_loaded"] > 0) == (r["init"] == "ssl")
    return seg


@pytest.mark.slow
def test_tiny_3d_hippocampus_study(tmp_path, capsys, data_dir):
    code = main(_args("configs/hippocampus.yaml", tmp_path, "h", TINY_3D))
    assert code == 0, capsys.readouterr().err
    run = tmp_path / "h"
    seg = _check_rows(_rows(run), 4, ["anterior", "posterior"])
    split = json.loads((run / "splits" / "fold0.json").read_text())
    assert_disjoint_groups({k: np.array(split[k]) for k in ("train", "val", "test")},
                           [f"c{i}" for i in range(10)])
    assert len(split["test"]) == 2 and not set(split["test"]) & set(split["train"] + split["val"])
    subset = json.loads((run / "segment/fold0/ssl_f0.1_s0/subset_indices.json").read_text())
    assert len(subset["indices"]) == 1 and set(subset["indices"]) <= set(split["train"])
    for r in seg:
        assert all((run / p).is_file() for p in r["overlays"])
    report = (run / "report.md").read_text()
    assert "SSL − scratch" in report and "Dice anterior" in report and "![" in report
    assert "- Trained on cpu in fp32." in report and all(r["precision"] == "fp32" for r in seg)
    assert all(r["steps"] == (r["val_curve"][-1][0] + 1) * r["steps_per_epoch"] for r in seg)
    html = (run / "report.html").read_text()  # the same report, overlays embedded, nothing fetched
    assert "<th>Dice anterior</th>" in html
    assert html.count("src='data:image/png;base64,") == report.count("![")
    assert not (tmp_path / "h.incomplete").exists()


@pytest.mark.slow
def test_engine_compile_reaches_3d_pretraining_and_segmentation(tmp_path, capsys, data_dir, compiled_parts):
    sets = [*TINY_3D, "finetune.fractions=[1.0]", "engine.compile=true"]
    code = main(_args("configs/hippocampus.yaml", tmp_path, "c", sets))
    assert code == 0, capsys.readouterr().err
    assert compiled_parts[0] != "SegmentationNet" and compiled_parts[1:] == ["SegmentationNet"] * 2
    _check_rows(_rows(tmp_path / "c"), 2, ["anterior", "posterior"])  # ssl and scratch


@pytest.mark.slow
def test_tiny_2d_isbi_study(tmp_path, capsys, data_dir):
    code = main(_args("configs/isbi2012.yaml", tmp_path, "i", TINY_2D))
    assert code == 0, capsys.readouterr().err
    _check_rows(_rows(tmp_path / "i"), 2, ["membrane"])
    assert (tmp_path / "i" / "report.md").is_file()


TINY_SLICES = [*TINY, "segmentation.max_cases=6", "segmentation.val_fraction=0.25", "pretrain.max_seconds=5",
               "finetune.fractions=[0.01]", "pretrain.batch_size=8"]


@pytest.mark.slow
def test_tiny_distortion_maskrcnn_study_unet_and_instance_routes(tmp_path, capsys, data_dir):
    """Hippocampus as 2D slices: Self-supervised Mask R-CNN pretraining, then (a) its encoder in a
    U-Net and (b) the whole detector fine-tuned as an instance segmenter (key report in the rows)."""
    code = main(_args("configs/distortion/hippocampus_maskrcnn.yaml", tmp_path, "m", TINY_SLICES))
    assert code == 0, capsys.readouterr().err
    seg = _check_rows(_rows(tmp_path / "m"), 2, ["anterior", "posterior"])
    subset = json.loads((tmp_path / "m/segment/fold0/ssl_f0.01_s0/subset_indices.json").read_text())
    assert len(subset["groups"]) == 1 and len(subset["indices"]) > 1  # 1 volume = all its slices
    ckpt = tmp_path / "m" / "pretrain" / "checkpoint.safetensors"
    sets = [*TINY_SLICES, "segmentation.network=maskrcnn", f"pretrain.checkpoint={ckpt}"]
    code = main(_args("configs/distortion/hippocampus_maskrcnn.yaml", tmp_path, "inst", sets))
    assert code == 0, capsys.readouterr().err
    inst = _check_rows(_rows(tmp_path / "inst"), 2, ["anterior", "posterior"])
    ssl = next(r for r in inst if r["init"] == "ssl")
    assert ssl["encoder_tensors_loaded"] == seg[0]["encoder_tensors_loaded"]  # the same backbone
    assert ssl["decoder_tensors_loaded"] > 20  # FPN, RPN, box and mask heads (not the class layers)


@pytest.mark.slow
def test_tiny_distortion_dense_3d_study(tmp_path, capsys, data_dir):
    sets = [*TINY_3D, "model.backbone=resnet18_small", "pretrain.max_seconds=5", "finetune.fractions=[0.01]"]
    code = main(_args("configs/distortion/hippocampus_dense.yaml", tmp_path, "d", sets))
    assert code == 0, capsys.readouterr().err
    seg = _check_rows(_rows(tmp_path / "d"), 2, ["anterior", "posterior"])
    assert next(r for r in seg if r["init"] == "ssl")["decoder_tensors_loaded"] > 0  # load_decoder


# --------------------------------------------------------------------------- bad input


def _nifti(path, arr):
    import nibabel as nib

    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(path))


def _dataset(root, problem):
    """Six tiny 3D cases; ``problem`` breaks one thing."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        _nifti(root / "images" / f"case_{i}.nii.gz", rng.random((8, 8, 8)).astype(np.float32))
        lab = rng.integers(0, 3, (8, 8, 8)).astype(np.uint8)
        _nifti(root / "labels" / f"case_{i}.nii.gz", lab)
    bad_label = root / "labels" / "case_2.nii.gz"
    if problem == "shape":
        _nifti(bad_label, np.zeros((8, 8, 7), np.uint8))
    elif problem == "values":
        _nifti(bad_label, np.full((8, 8, 8), 7, np.uint8))
    elif problem == "corrupt":
        (root / "images" / "case_2.nii.gz").write_bytes(b"\x1f\x8b garbage")
    elif problem == "non_image":
        (root / "images" / "notes.txt").write_text("x")
    elif problem == "empty":
        for p in (root / "images").iterdir():
            p.unlink()
    elif problem == "unpaired":
        bad_label.unlink()
    return {"shape": "case_2.nii.gz", "values": "unexpected label values [7]", "corrupt": "case_2.nii.gz",
            "non_image": "notes.txt", "empty": "folder has no images", "unpaired": "case_2.nii.gz"}[problem]


@pytest.mark.parametrize("problem", ["shape", "values", "corrupt", "non_image", "empty", "unpaired"])
def test_bad_segmentation_data_is_a_one_line_error_and_nothing_is_written(tmp_path, capsys, problem):
    needle = _dataset(tmp_path / "data", problem)
    sets = [f"data.path={tmp_path / 'data'}", "segmentation.images=images", "segmentation.masks=labels",
            "segmentation.max_cases=null", "segmentation.crop=[8,8,8]", "segmentation.sw_roi=null",
            "segmentation.shape=null"]
    code = main(_args("configs/hippocampus.yaml", tmp_path / "runs", "bad", [*TINY, *sets]))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("medssl: error:"), err
    assert needle in err[0], err
    assert not (tmp_path / "runs").exists()


def test_config_mistakes_fail_before_any_data_is_read(tmp_path, capsys):
    for sets, needle in ((["segmentation.class_names=[a]"], "1 names for 2 foreground classes"),
                         (["segmentation.test_folds=[5]"], "test_folds [5]"),
                         (["task=detection"], "'task' must be classification or segmentation"),
                         (["segmentation.network=maskrcnn"], "fine-tunes a distortion_maskrcnn detector"),
                         (["segmentation.network=yolo"], "'segmentation.network' must be unet or maskrcnn")):
        code = main(_args("configs/hippocampus.yaml", tmp_path, "bad", [*sets, "data.path=/nonexistent"]))
        err = capsys.readouterr().err
        assert code == 2 and needle in err, err
    assert list(tmp_path.iterdir()) == []


def test_segmentation_report_means_and_deltas(tmp_path):
    from medssl.report.report import write_report

    rows = [{"protocol": "segmentation", "init": init, "fraction": 1.0, "seed": 0, "fold": fold,
             "classes": ["a"], "dice_a": d, "dice_mean": d, "iou_mean": d / 2, "hd95_mean": 3.0,
             "seconds": 10.0, "overlays": [], "method": "simclr", "dataset": "x", "spatial_dims": 3}
            for init, dices in (("ssl", (0.8, 0.6)), ("scratch", (0.5, 0.5))) for fold, d in enumerate(dices)]
    (tmp_path / "results.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report = write_report(tmp_path).read_text()
    assert "| 1 | ssl | 2 | 0.700 ± 0.141 | 0.700 ± 0.141 | 0.350 ± 0.071 | 3.00 ± 0.00 | 10 |" in report
    assert "mean Dice, SSL − scratch = +0.200" in report
    for resumed, line in ((False, "- whole study: 50 s"), (True, "- last resumed part of the study: 50 s")):
        study = {"protocol": "study", "seconds": 50.0, "resumed": resumed}
        (tmp_path / "results.jsonl").write_text("\n".join(json.dumps(r) for r in [*rows, study]) + "\n")
        assert line in write_report(tmp_path).read_text()


def test_pretraining_pool_tiles_2d_pads_3d_and_can_leave_out_test_cases():
    from medssl.data.segmentation import SegmentationData

    def data(dims, shapes, size):
        images = [np.full(s, i, np.uint8) for i, s in enumerate(shapes)]
        shape = tuple(int(n) for n in np.max(shapes, 0))
        return SegmentationData("x", dims, size, shape, ["fg"], [f"c{i}" for i in range(len(shapes))],
                                [f"c{i}" for i in range(len(shapes))], images,
                                [np.zeros(s, np.uint8) for s in shapes], [(1.0,) * dims] * len(shapes))

    d2 = data(2, [(64, 96), (64, 64)], 32)
    assert d2.pretrain_data().images.shape == (6 + 4, 1, 32, 32)
    d3 = data(3, [(4, 6, 8), (6, 6, 6), (5, 5, 5)], 4)
    pool = d3.pretrain_data(exclude=[1]).images
    assert pool.shape == (2, 1, 6, 6, 8) and set(np.unique(pool.numpy())) == {0, 2}  # case 1 left out
    x, y = d3.stack([0, 2])
    assert x.shape == (2, 1, 6, 6, 8) and y.shape == (2, 6, 6, 8)


def test_real_hippocampus_as_2d_slices(data_dir):
    sets = ["segmentation.max_cases=4", "segmentation.slice_axis=0", "segmentation.crop=[64,48]",
            "segmentation.sw_roi=[64,48]"]
    cfg = load_config("configs/hippocampus.yaml", sets)
    vols = validate_segmentation(load_config("configs/hippocampus.yaml", ["segmentation.max_cases=4"]))
    data = validate_segmentation(cfg)
    assert data.spatial_dims == 2 and data.shape == (64, 48)  # [48, 64, 48] without axis 0
    with_fg = [k for v in vols.labels for k in range(v.shape[0]) if v[k].any()]
    assert len(data) == len(with_fg) and all(lab.any() for lab in data.labels)
    n_slices = sum(v.shape[0] for v in vols.images)
    assert len(data) + len(data.unlabelled) == n_slices  # background-only slices: pretraining only
    first = vols.cases[0]
    k = int(data.cases[0].rsplit("_", 1)[1])
    assert data.cases[0].startswith(first) and np.array_equal(data.images[0], vols.images[0][k])
    assert set(data.groups) == set(vols.cases)  # splits stay per volume
    assert data.spacings[0] == (1.0, 1.0)
