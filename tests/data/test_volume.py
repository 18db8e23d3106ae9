"""NIfTI/DICOM readers, label maps, normalisation, windowing and resampling on tiny tmp files."""

from __future__ import annotations

import gzip
import re
import struct

import numpy as np
import pytest
from medical_fixtures import PHI, write_dicom, write_nifti

from medssl.data.volume import (
    WINDOWS,
    apply_window,
    normalize_intensity,
    pad_or_crop,
    read_dicom,
    read_dicom_dir,
    read_dicom_series,
    read_nifti,
    resample,
    to_class_map,
)
from medssl.errors import MedsslError


def test_nifti_roundtrip_keeps_values_and_spacing(tmp_path):
    arr = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    path = write_nifti(tmp_path / "v.nii.gz", arr, spacing=(1.0, 2.0, 3.0))
    got, spacing = read_nifti(path)
    assert np.array_equal(got, arr) and spacing == (1.0, 2.0, 3.0)


def test_float_label_map_is_cast_to_classes(tmp_path):
    lab = np.array([[[0.0, 1.0], [2.0, 2.0]]], dtype=np.float32)
    path = write_nifti(tmp_path / "l.nii.gz", lab)
    got = to_class_map(read_nifti(path)[0], [0, 1, 2], path)
    assert got.dtype == np.uint8 and got.tolist() == [[[0, 1], [2, 2]]]


def test_label_values_are_mapped_in_class_order():
    assert to_class_map(np.array([[255, 0]]), [255, 0], "m.png").tolist() == [[0, 1]]


@pytest.mark.parametrize("values,needle", [(np.array([[0.0, 0.5]]), "non-integer"),
                                           (np.array([[0, 3]]), "unexpected label values [3]")])
def test_bad_label_values_name_the_file(values, needle):
    with pytest.raises(MedsslError, match=re.escape("mask.nii.gz")) as err:
        to_class_map(values, [0, 1, 2], "mask.nii.gz")
    assert needle in str(err.value)


@pytest.mark.parametrize("kind", ["garbage", "truncated", "not_3d"])
def test_corrupt_nifti_is_a_one_line_error_naming_the_file(tmp_path, kind):
    path = tmp_path / "bad.nii.gz"
    if kind == "garbage":
        path.write_bytes(gzip.compress(b"not a nifti header at all" * 20))
    elif kind == "truncated":
        write_nifti(path, np.random.rand(20, 20, 20).astype(np.float32))
        path.write_bytes(path.read_bytes()[:300])
    else:
        write_nifti(path, np.zeros((4, 4, 4, 2), np.float32))
    with pytest.raises(MedsslError) as err:
        read_nifti(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_minmax_and_zscore_normalisation_clip_outliers():
    x = np.concatenate([np.linspace(0, 100, 1000), [1e6]]).astype(np.float32)
    mm = normalize_intensity(x, "minmax", (0.5, 99.5))
    assert mm.min() == 0 and mm.max() == 1 and mm[-1] == 1  # the outlier is clipped, not stretched
    assert mm[500] == pytest.approx(0.5, abs=0.01)
    z = normalize_intensity(x, "zscore")
    assert z.mean() == pytest.approx(0, abs=1e-5) and z.std() == pytest.approx(1, abs=1e-4)
    assert not normalize_intensity(np.full(10, 7.0)).any()  # constant volume -> zeros


def test_resample_and_pad_or_crop_shapes():
    vol = np.random.rand(10, 20, 8).astype(np.float32)
    assert resample(vol, (2.0, 1.0, 1.0), (1.0, 1.0, 2.0)).shape == (20, 20, 4)
    lab = np.random.randint(0, 3, (10, 20, 8)).astype(np.uint8)
    out = resample(lab, (2.0, 1.0, 1.0), (1.0, 1.0, 2.0), label=True)
    assert out.dtype == np.uint8 and set(np.unique(out)) <= {0, 1, 2}
    padded = pad_or_crop(lab, (12, 16, 8))
    assert padded.shape == (12, 16, 8) and padded.dtype == np.uint8
    assert np.array_equal(padded[1:11, :, :], lab[:, 2:18, :])  # centred


def test_dicom_rescale_slope_and_intercept_are_applied(tmp_path):
    stored = np.array([[0, 1000], [2000, 3000]], dtype=np.uint16)
    path = write_dicom(tmp_path / "a.dcm", stored, slope=2.0, intercept=-1024.0)
    sl = read_dicom(path)
    assert sl.pixels.tolist() == [[-1024, 976], [2976, 4976]]
    assert sl.spacing == (0.5, 0.7)


def test_out_of_order_series_is_sorted_by_position(tmp_path):
    for name, z in (("a.dcm", 10.0), ("b.dcm", 0.0), ("c.dcm", 5.0)):
        write_dicom(tmp_path / name, np.full((3, 4), int(z), np.uint16), z=z, intercept=-1.0)
    volume, spacing = read_dicom_dir(tmp_path)
    assert volume.shape == (3, 3, 4)
    assert volume[:, 0, 0].tolist() == [-1.0, 4.0, 9.0]
    assert spacing == (5.0, 0.5, 0.7)


def test_series_without_position_falls_back_to_instance_number(tmp_path):
    paths = [write_dicom(tmp_path / f"{n}.dcm", np.full((2, 2), v, np.uint16), instance=v)
             for n, v in (("x", 3), ("y", 1), ("z", 2))]
    volume, _ = read_dicom_series(paths)
    assert volume[:, 0, 0].tolist() == [1, 2, 3]


def test_dicom_errors_name_the_file_and_never_show_phi(tmp_path):
    no_pixels = write_dicom(tmp_path / "nopix.dcm", np.zeros((2, 2), np.uint16), pixel_data=False)
    corrupt = write_dicom(tmp_path / "corrupt.dcm", np.zeros((64, 64), np.uint16))
    corrupt.write_bytes(corrupt.read_bytes()[:-3000])
    not_dicom = tmp_path / "notes.dcm"
    not_dicom.write_text("hello")
    for path, needle in ((no_pixels, "no pixel data"), (corrupt, "cannot be decoded"),
                         (not_dicom, "not a readable DICOM")):
        with pytest.raises(MedsslError) as err:
            read_dicom(path)
        message = str(err.value)
        assert str(path) in message and needle in message, message
        assert not any(v in message for v in PHI.values()), message


def test_dicom_slice_carries_no_patient_tags(tmp_path):
    sl = read_dicom(write_dicom(tmp_path / "a.dcm", np.zeros((2, 2), np.uint16)))
    assert not any(v in repr(sl) for v in PHI.values())


@pytest.mark.parametrize("preset", sorted(WINDOWS))
def test_window_presets_map_centre_and_edges(preset):
    centre, width = WINDOWS[preset]
    hu = np.array([centre - width / 2 - 50, centre - width / 2, centre, centre + width / 2, 5000])
    assert apply_window(hu, preset).tolist() == pytest.approx([0, 0, 0.5, 1, 1])


def test_window_presets_are_the_usual_values():
    assert WINDOWS == {"lung": (-600, 1500), "soft_tissue": (40, 400), "bone": (400, 1800)}
    with pytest.raises(MedsslError, match="unknown CT window 'brain'"):
        apply_window(np.zeros(2), "brain")


def _retag(path, **tags):
    import pydicom

    ds = pydicom.dcmread(str(path))
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.save_as(str(path))
    return path


@pytest.mark.parametrize("odd,needle", [
    ({"ImageOrientationPatient": [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]},
     "slice orientation [0, 1, 0, 0, 0, -1] differs from the series' [1, 0, 0, 0, 1, 0]"),
    ({"PixelSpacing": [0.9, 0.9]}, "slice pixel spacing [0.9, 0.9] differs from the series' [0.5, 0.7]"),
])
def test_series_with_mixed_geometry_is_refused_naming_the_odd_slice(tmp_path, odd, needle):
    paths = [write_dicom(tmp_path / f"{i}.dcm", np.zeros((3, 3), np.uint16), z=float(i)) for i in range(3)]
    _retag(paths[2], **odd)
    with pytest.raises(MedsslError) as err:
        read_dicom_series(paths)
    assert str(paths[2]) in str(err.value) and needle in str(err.value), str(err.value)


def test_series_with_differing_slice_sizes_is_refused(tmp_path):
    a = write_dicom(tmp_path / "a.dcm", np.zeros((3, 3), np.uint16), z=0.0)
    b = write_dicom(tmp_path / "b.dcm", np.zeros((3, 4), np.uint16), z=1.0)
    with pytest.raises(MedsslError, match=re.escape(f"{b}: slice shape (3, 4) differs")):
        read_dicom_series([a, b])


def test_damaged_dicom_element_is_a_medssl_error(tmp_path):
    """pydicom parses lazily: a bad VR inside the header fails on first access, not in dcmread."""
    path = write_dicom(tmp_path / "a.dcm", np.zeros((2, 2), np.uint16), instance=1)
    data = path.read_bytes()
    at = data.index(b"\x20\x00\x13\x00IS")  # InstanceNumber, explicit VR "IS"
    path.write_bytes(data[:at + 4] + b"I\x00" + data[at + 6:])  # an unknown VR
    with pytest.raises(MedsslError, match="DICOM header cannot be parsed"):
        read_dicom(path)


def test_nifti_header_declaring_huge_or_missing_data_is_refused_before_reading(tmp_path):
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(tmp_path / "huge.nii"))
    data = bytearray((tmp_path / "huge.nii").read_bytes())
    struct.pack_into("<8h", data, 40, 3, 32000, 32000, 32000, 1, 1, 1, 1)  # ~120 TiB of float32
    (tmp_path / "huge.nii").write_bytes(bytes(data))
    with pytest.raises(MedsslError, match=r"huge.nii: header declares shape \(32000, 32000, 32000\)"):
        read_nifti(tmp_path / "huge.nii")
    big = tmp_path / "big.nii.gz"  # 128 MiB declared, a few bytes stored: no 128 MiB allocation
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((512, 512, 128))
    hdr.set_data_dtype(np.float32)
    big.write_bytes(gzip.compress(hdr.binaryblock + b"\0" * 4 + b"\1" * 100))
    with pytest.raises(MedsslError, match=re.escape("big.nii.gz: truncated: the header declares")):
        read_nifti(big)
