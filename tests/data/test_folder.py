"""Image folders, mask pairing, label CSVs and the DICOM classification loader (no PHI leaks)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from medical_fixtures import PHI, write_dicom, write_png

from medssl.cli import main
from medssl.data.folder import (
    list_files,
    load_csv_classification,
    pair_by_name,
    pseudonym,
    read_image,
    read_label_csv,
    read_mask,
)
from medssl.errors import MedsslError

PNG = (".png", ".jpg")


def test_list_files_natural_order_skips_hidden_files(tmp_path):
    for i in (10, 2, 1):
        write_png(tmp_path / f"{i}.png", np.zeros((2, 2)))
    (tmp_path / ".DS_Store").write_text("x")
    assert [p.name for p in list_files(tmp_path, PNG)] == ["1.png", "2.png", "10.png"]


def test_non_image_file_and_empty_folder_are_errors_naming_the_path(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedsslError, match="empty: folder has no images"):
        list_files(tmp_path / "empty", PNG)
    (tmp_path / "full").mkdir()
    write_png(tmp_path / "full" / "a.png", np.zeros((2, 2)))
    (tmp_path / "full" / "notes.txt").write_text("x")
    with pytest.raises(MedsslError, match=re.escape("notes.txt: not an image file")):
        list_files(tmp_path / "full", PNG)


def test_read_image_grey_rgb_16bit_and_corrupt(tmp_path):
    from PIL import Image

    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0] = 255
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert read_image(tmp_path / "rgb.png").shape == (4, 5)
    assert read_image(tmp_path / "rgb.png", channels=3)[0].max() == 255
    Image.fromarray(np.arange(0, 4000, 100, dtype=np.uint16).reshape(5, 8)).save(tmp_path / "deep.png")
    deep = read_image(tmp_path / "deep.png")
    assert deep.dtype == np.uint8 and deep.min() == 0 and deep.max() == 255
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(MedsslError, match=re.escape("broken.png: not a readable image")):
        read_image(tmp_path / "broken.png")


def test_masks_pair_by_name_across_suffixes(tmp_path):
    (tmp_path / "img").mkdir(), (tmp_path / "msk").mkdir()
    for name in ("a", "b"):
        write_png(tmp_path / "img" / f"{name}.png", np.zeros((2, 2)))
    from PIL import Image

    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "msk" / "a.tif")
    write_png(tmp_path / "msk" / "b.png", np.zeros((2, 2)))
    pairs = pair_by_name(list_files(tmp_path / "img", PNG), list_files(tmp_path / "msk", (".png", ".tif")))
    assert [(i.name, m.name) for i, m in pairs] == [("a.png", "a.tif"), ("b.png", "b.png")]


def test_unpaired_image_or_mask_is_an_error_naming_it(tmp_path):
    img = [tmp_path / "a.png", tmp_path / "b.png"]
    with pytest.raises(MedsslError, match=re.escape("b.png: no mask with the same name")):
        pair_by_name(img, [tmp_path / "m" / "a.png"])
    with pytest.raises(MedsslError, match=re.escape("c.png: mask has no image")):
        pair_by_name(img[:1], [tmp_path / "m" / "a.png", tmp_path / "m" / "c.png"])


def test_colour_mask_is_rejected(tmp_path):
    from PIL import Image

    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "m.png")
    with pytest.raises(MedsslError, match=re.escape("m.png: mask has colour channels")):
        read_mask(tmp_path / "m.png")


def _csv(tmp_path, text):
    path = tmp_path / "labels.csv"
    path.write_text(text)
    return path


def test_label_csv_rows_and_pseudonymised_patients(tmp_path):
    write_png(tmp_path / "a.png", np.zeros((2, 2)))
    write_png(tmp_path / "b.png", np.zeros((2, 2)))
    rows = read_label_csv(_csv(tmp_path, "path,label,patient_id\na.png,1,P1\nb.png,0,P1\n"))
    assert [(r.path.name, r.label) for r in rows] == [("a.png", 1), ("b.png", 0)]
    assert rows[0].group == rows[1].group == pseudonym("P1") and "P1" not in rows[0].group
    no_patient = read_label_csv(_csv(tmp_path, "path,label\na.png,1\n"), ("path", "label"))
    assert no_patient[0].group == "a"


@pytest.mark.parametrize("text,needle", [
    ("file,label\na.png,1\n", "no column 'path'"),
    ("path,label\nmissing.png,1\n", "labels.csv:2: image file 'missing.png' not found"),
    ("path,label\na.png,yes\n", "labels.csv:2: label 'yes' is not an integer"),
    ("path,label\n", "labels.csv: no rows"),
])
def test_bad_label_csv_is_a_one_line_error(tmp_path, text, needle):
    write_png(tmp_path / "a.png", np.zeros((2, 2)))
    with pytest.raises(MedsslError) as err:
        read_label_csv(_csv(tmp_path, text), ("path", "label"))
    assert needle in str(err.value)


def _dicom_csv(tmp_path, patients=10):
    """Two CT slices per patient (one per class), every file carrying PHI tags."""
    lines = ["file,contrast,patient_id"]
    rng = np.random.default_rng(0)
    for p in range(patients):
        for label in (0, 1):
            name = f"dicom/s{p}_{label}.dcm"
            (tmp_path / "dicom").mkdir(parents=True, exist_ok=True)
            write_dicom(tmp_path / name, rng.integers(0, 2000, (16, 16)).astype(np.uint16),
                        intercept=-1024.0)
            lines.append(f"{name},{label},{PHI['PatientID']}-{p}")
    return _csv(tmp_path, "\n".join(lines) + "\n")


def test_dicom_classification_loader_splits_by_patient(tmp_path):
    data = load_csv_classification(_dicom_csv(tmp_path), ["file", "contrast", "patient_id"], 28,
                                   "soft_tissue", folds=5, test_fold=0, seed=0)
    assert data.train.images.shape == (12, 1, 28, 28) and data.train.images.dtype.is_floating_point is False
    assert len(data.val) == len(data.test) == 4 and data.num_classes == 2
    assert type(data).__name__ == "ClassificationData" and data.class_names == ("0", "1")
    assert data.task == "binary-class" and data.name == tmp_path.name
    # every patient contributes one slice of each class, so each split is class-balanced
    for split in (data.train, data.val, data.test):
        assert int(split.labels.sum()) * 2 == len(split)


def patients_per_split(csv_path, monkeypatch, **kwargs):
    """{split: set of raw patient ids} of load_csv_classification, read back through the images: the
    reader is replaced by one whose image encodes the CSV row (pixel value 2 * row)."""
    import csv

    from medssl.data import folder

    with open(csv_path, newline="") as f:
        records = list(csv.DictReader(f))
    row_of = {(csv_path.parent / r["file"]).resolve(): i for i, r in enumerate(records)}
    monkeypatch.setattr(folder, "read_any_image", lambda path, window: np.full(
        (8, 8), (2 * row_of[path.resolve()] + 0.5) / 255, np.float32))
    data = load_csv_classification(csv_path, ["file", "contrast", "patient_id"], 8, "soft_tissue", **kwargs)
    out = {}
    for name in ("train", "val", "test"):
        split = getattr(data, name)
        rows = [int(v) // 2 for v in split.images[:, 0, 0, 0]]
        assert [int(records[r]["contrast"]) for r in rows] == split.labels.tolist()  # image and label agree
        out[name] = {records[r]["patient_id"] for r in rows}
    assert sum(len(getattr(data, n)) for n in out) == len(records)
    return out, {r["patient_id"] for r in records}


def _assert_patient_disjoint(splits, patients):
    assert all(splits.values())
    assert not splits["train"] & splits["val"] and not splits["train"] & splits["test"]
    assert not splits["val"] & splits["test"] and set().union(*splits.values()) == patients


@pytest.mark.parametrize("test_fold,seed", [(0, 0), (3, 1), (4, 7)])
def test_dicom_csv_split_puts_each_patient_in_one_split(tmp_path, monkeypatch, test_fold, seed):
    splits, patients = patients_per_split(_dicom_csv(tmp_path, patients=15), monkeypatch, folds=5,
                                          test_fold=test_fold, seed=seed)
    _assert_patient_disjoint(splits, patients)


def test_real_tcia_dicom_split_puts_each_patient_in_one_split(data_dir, monkeypatch):
    csv_path = data_dir / "tcia_ct_contrast_dicom" / "labels.csv"
    for test_fold in range(5):
        splits, patients = patients_per_split(csv_path, monkeypatch, folds=5, test_fold=test_fold, seed=0)
        assert len(patients) == 54  # 100 slices, several patients with more than one
        _assert_patient_disjoint(splits, patients)


def test_tiny_dicom_classification_study_leaks_no_phi(tmp_path, capsys):
    csv_path = _dicom_csv(tmp_path / "data")
    sets = [f"output_dir={tmp_path / 'runs'}", "name=phi", "data.format=csv", f"data.path={csv_path}",
            "data.columns=[file, contrast, patient_id]", "data.size=28", "model.width=0.125",
            "pretrain.epochs=1", "pretrain.batch_size=8", "finetune.epochs=1", "finetune.min_steps=0",
            "finetune.batch_size=8", "finetune.fractions=[1.0]", "finetune.seeds=[0]", "finetune.knn_k=3",
            "finetune.knn=false", "engine.precision=fp32"]
    code = main(["study", "configs/demo.yaml", *[a for s in sets for a in ("--set", s)]])
    out = capsys.readouterr()
    assert code == 0, out.err
    run = tmp_path / "runs" / "phi"
    assert (run / "report.md").is_file()
    blobs = [p.read_bytes() for p in run.rglob("*") if p.is_file()] + [out.out.encode(), out.err.encode()]
    for value in PHI.values():
        assert not any(value.encode() in b for b in blobs), value


def test_dicom_without_pixel_data_stops_the_study_before_anything_is_written(tmp_path, capsys):
    csv_path = _dicom_csv(tmp_path / "data")
    bad = tmp_path / "data" / "dicom" / "s3_1.dcm"
    write_dicom(bad, np.zeros((16, 16), np.uint16), pixel_data=False)
    sets = [f"output_dir={tmp_path / 'runs'}", "data.format=csv", f"data.path={csv_path}",
            "data.columns=[file, contrast, patient_id]"]
    code = main(["study", "configs/demo.yaml", *[a for s in sets for a in ("--set", s)]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"{bad}: DICOM file has no pixel data" in err[0], err
    assert not any(v in err[0] for v in PHI.values())
    assert not (tmp_path / "runs").exists()


def test_real_tcia_dicom_loader(data_dir):
    data = load_csv_classification(data_dir / "tcia_ct_contrast_dicom" / "labels.csv",
                                   ["file", "contrast", "patient_id"], 64, "soft_tissue", 5, 0, 0)
    assert len(data.train) + len(data.val) + len(data.test) == 100
    assert data.test.images.shape[1:] == (1, 64, 64)
    for split in (data.train, data.val, data.test):
        assert set(split.labels.tolist()) == {0, 1}
