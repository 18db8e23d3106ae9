"""Property tests: random and mutated npz, NIfTI, DICOM, PNG and CSV files and random config text.

Whatever the bytes, a reader either returns or raises :class:`MedsslError` with a one-line message;
any other exception type escaping is a failure (it would reach the user as a traceback).
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medssl.config import load_config
from medssl.data.folder import load_csv_classification, read_image, read_label_csv, read_mask
from medssl.data.medmnist import load_npz
from medssl.data.volume import read_dicom, read_nifti
from medssl.errors import MedsslError

_spec = importlib.util.spec_from_file_location("medical_fixtures", Path(__file__).parent / "data" /
                                               "medical_fixtures.py")
fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixtures)
write_dicom, write_nifti = fixtures.write_dicom, fixtures.write_nifti

# 60 examples per property keeps each test under ~2 s; MEDSSL_FUZZ_EXAMPLES=2000 for a long hunt
FUZZ = settings(max_examples=int(os.environ.get("MEDSSL_FUZZ_EXAMPLES", 60)), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
WORK = Path(tempfile.mkdtemp(prefix="medssl-fuzz-"))


def only_medssl_errors(read: Callable[[], object]) -> None:
    """Run ``read``; a MedsslError must be one line, and any other exception fails the test."""
    try:
        read()
    except MedsslError as err:
        assert "\n" not in str(err) and str(err), repr(str(err))
    except Exception as err:  # the property under test: nothing else escapes
        pytest.fail(f"{type(err).__name__} escaped instead of MedsslError: {err!r}"[:400])


@st.composite
def mutated(draw, valid: bytes) -> bytes:
    """``valid`` with a few bytes overwritten, a slice deleted or inserted, or cut short."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(0, 6))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    kind = draw(st.sampled_from(["flip", "cut", "delete", "insert"]))
    if kind == "cut":
        data = data[: draw(st.integers(0, len(data)))]
    elif kind == "delete":
        start = draw(st.integers(0, len(data)))
        del data[start: start + draw(st.integers(1, 64))]
    elif kind == "insert":
        data[draw(st.integers(0, len(data))):0] = draw(st.binary(min_size=1, max_size=64))
    return bytes(data)


def file_bytes(write: Callable[[Path], object], name: str) -> bytes:
    path = WORK / f"valid-{name}"
    write(path)
    return path.read_bytes()


def tiny_npz() -> bytes:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).astype(np.uint8).reshape(n, 1)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # stored, not deflated: mutations reach the array headers and data
    return buf.getvalue()


NPZ = tiny_npz()
NIFTI_RAW = file_bytes(lambda p: write_nifti(p, np.arange(64, dtype=np.int16).reshape(4, 4, 4)), "v.nii")
DICOM = file_bytes(lambda p: write_dicom(p, np.arange(16).reshape(4, 4), z=1.0, instance=1), "s.dcm")


def png_bytes(mode: str) -> bytes:
    from PIL import Image

    arr = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    img = Image.fromarray(arr, "RGB").convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


PNGS = {mode: png_bytes(mode) for mode in ("L", "RGB", "RGBA", "P", "LA", "I;16", "1")}


def put(name: str, data: bytes) -> Path:
    path = WORK / name
    path.write_bytes(data)
    return path


@FUZZ
@given(st.one_of(mutated(NPZ), st.binary(max_size=512)))
def test_npz_reader_raises_only_medssl_errors(data):
    path = put("f.npz", data)
    only_medssl_errors(lambda: load_npz(path, "breastmnist", 28))


@FUZZ
@given(st.one_of(mutated(NIFTI_RAW), st.binary(max_size=512)), st.booleans())
def test_nifti_reader_raises_only_medssl_errors(data, compress):
    # mutate the uncompressed bytes (header fields) and, half the time, gzip the result
    path = put("v.nii.gz", gzip.compress(data)) if compress else put("v.nii", data)
    only_medssl_errors(lambda: read_nifti(path))


@FUZZ
@given(mutated(gzip.compress(NIFTI_RAW)))
def test_corrupt_gzip_nifti_raises_only_medssl_errors(data):
    path = put("g.nii.gz", data)
    only_medssl_errors(lambda: read_nifti(path))


@FUZZ
@given(st.one_of(mutated(DICOM), st.binary(max_size=512)))
def test_dicom_reader_raises_only_medssl_errors(data):
    path = put("s.dcm", data)
    only_medssl_errors(lambda: read_dicom(path))


@FUZZ
@given(st.sampled_from(sorted(PNGS)).flatmap(lambda m: mutated(PNGS[m])), st.sampled_from([1, 3]))
def test_png_readers_raise_only_medssl_errors(data, channels):
    path = put("i.png", data)
    only_medssl_errors(lambda: read_image(path, channels))
    only_medssl_errors(lambda: read_mask(path))


CSV_CELLS = st.one_of(st.sampled_from(["a.png", "b.png", "../a.png", "/etc/passwd", "0", "1", "2",
                                       "-1", "x", "", "p1", "p2", '"', "a.png,1"]),
                      st.text(max_size=8))


@FUZZ
@given(st.lists(st.lists(CSV_CELLS, max_size=4), max_size=8),
       st.sampled_from([["path", "label"], ["path", "label", "patient_id"], ["file", "y"]]),
       st.binary(max_size=8))
def test_csv_reader_raises_only_medssl_errors(rows, columns, junk):
    folder = WORK / "csv"
    folder.mkdir(exist_ok=True)
    from PIL import Image

    for name in ("a.png", "b.png"):
        if not (folder / name).exists():
            Image.fromarray(np.full((6, 6), 100, np.uint8)).save(folder / name)
    text = "\n".join(",".join(r) for r in [["path", "label", "patient_id"], *rows])
    path = folder / "labels.csv"
    path.write_bytes(text.encode() + junk)
    only_medssl_errors(lambda: read_label_csv(path, columns))
    only_medssl_errors(lambda: load_csv_classification(path, columns, 8, "none", 2, 0, 0))


YAML_TEXT = st.one_of(
    st.text(max_size=80),
    st.lists(st.tuples(st.sampled_from(["name", "seed", "pretrain", "data", "finetune", "bogus", "model"]),
                       st.sampled_from(["", " 3", " -1", " [1, 2]", " {epochs: 0}", " {lr: x}", " .nan",
                                        " null", " 'x'", " {size: 0}", " [", " {fractions: [2]}"])),
             max_size=5).map(lambda kv: "\n".join(f"{k}:{v}" for k, v in kv)),
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
)
SET_TEXT = st.one_of(
    st.text(max_size=30),
    st.tuples(st.sampled_from(["pretrain.epochs", "data", "finetune.fractions", "a.b.c", "", ".", "name",
                               "segmentation.crop", "pretrain.method_args"]),
              st.sampled_from(["", "=", "0", "-3", "[", "[0]", "{a: 1}", "x", "null", "1e999",
                               "[1, 2, 3, 4]"]))
    .map(lambda kv: f"{kv[0]}={kv[1]}"),
)


@FUZZ
@given(YAML_TEXT, st.lists(SET_TEXT, max_size=3), st.booleans())
def test_config_parser_raises_only_medssl_errors(text, overrides, as_bytes):
    path = WORK / "c.yaml"
    if as_bytes:
        path.write_bytes(text.encode("latin-1", "replace"))
    else:
        path.write_text(text, encoding="utf-8")
    only_medssl_errors(lambda: load_config(path, overrides))


def test_the_guard_itself_fails_on_a_foreign_exception():
    """The property is only as good as its check: a non-MedsslError must fail the test."""
    with pytest.raises(pytest.fail.Exception, match="KeyError escaped"):
        only_medssl_errors(lambda: {}["missing"])
    only_medssl_errors(lambda: (_ for _ in ()).throw(MedsslError("one line")))
