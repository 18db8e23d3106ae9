"""Image folders (PNG/JPG/TIFF via Pillow), mask folders paired by file name, and label CSVs.

A label CSV has one row per image: ``path,label[,patient_id]`` (column names configurable; paths
relative to the CSV's folder). Images may be PNG/JPG/TIFF or DICOM (read with
:func:`medssl.data.volume.read_dicom` and CT-windowed). Patient ids are replaced by a one-way
pseudonym (a SHA-256 prefix) as soon as they are read, so they can group samples for patient-level
splits but never reach logs or run directories.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import torch
import torch.nn.functional as F

from medssl.data.cache import cache_key, cached_stack
from medssl.data.types import ClassificationData, Split
from medssl.data.volume import NIFTI_SUFFIXES, apply_window, normalize_intensity, read_dicom, to_uint8
from medssl.errors import MedsslError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DICOM_SUFFIXES = (".dcm",)


def natural_key(path: Path) -> list:
    """Sort key that puts ``2.png`` before ``10.png``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def stem(path: Path) -> str:
    """File name without its image suffix (``case_1.nii.gz`` -> ``case_1``)."""
    name = path.name
    for suffix in (*NIFTI_SUFFIXES, *IMAGE_SUFFIXES, *DICOM_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def list_files(folder: str | Path, suffixes: Sequence[str], recursive: bool = False) -> list[Path]:
    """Files of ``folder`` (and, if ``recursive``, of its subfolders) in natural order of their
    relative paths; any other (non-hidden) file is an error naming it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MedsslError(f"{folder}: folder not found")
    files = [p for p in (folder.rglob("*") if recursive else folder.iterdir())
             if not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    if recursive:
        files = [p for p in files if not p.is_dir()]
    for p in files:
        if p.is_dir() or not p.name.lower().endswith(tuple(suffixes)):
            raise MedsslError(f"{p}: not an image file (expected {', '.join(suffixes)})")
    if not files:
        raise MedsslError(f"{folder}: folder has no images")
    return sorted(files, key=lambda p: [natural_key(Path(part)) for part in p.relative_to(folder).parts])


def _open(path: Path):
    from PIL import Image

    try:
        img = Image.open(path)
        img.load()  # decode now, so truncated files fail here
    except Exception as err:  # PIL raises UnidentifiedImageError, OSError, SyntaxError...
        raise MedsslError(f"{path}: not a readable image ({type(err).__name__})") from err
    return img


def read_image(path: str | Path, channels: int = 1) -> np.ndarray:
    """Read an image as uint8: ``[H, W]`` for ``channels=1``, ``[3, H, W]`` for ``channels=3``.

    Pillow modes are handled as follows: 16/32-bit integer and float images (``I;16``, ``I``,
    ``F``) are min-max scaled per image (0.5-99.5 percentile clip), never clipped at 255; an alpha
    channel (``RGBA``, ``LA``, ``PA``) is dropped, not composited; palette images (``P``) are looked
    up through their palette, then made grey by luminance (Pillow's ``convert("L")``, ITU-R 601-2);
    1-bit images give 0/255. A mode Pillow cannot convert is a one-line error naming the file.
    """
    path = Path(path)
    img = _open(path)
    try:
        if img.mode.startswith(("I", "F")):  # 16-bit/float: PIL's convert("L") would clip at 255
            grey = to_uint8(normalize_intensity(np.asarray(img)))
            return grey if channels == 1 else np.repeat(grey[None], 3, 0)
        if channels == 1:
            return np.array(img.convert("L"))  # a writable copy
        return np.asarray(img.convert("RGB")).transpose(2, 0, 1).copy()
    except (ValueError, OSError) as err:  # e.g. "conversion from HSV to L not supported"
        raise MedsslError(f"{path}: image mode {img.mode} cannot be read as grey/RGB "
                          f"({type(err).__name__})") from err


def read_mask(path: str | Path) -> np.ndarray:
    """Read a label mask as integer values ``[H, W]``.

    Palette masks give palette indices; an alpha channel is ignored; RGB masks must be grey
    (R = G = B), else it is an error naming the file.
    """
    path = Path(path)
    img = _open(path)
    arr = np.array(img)
    if img.mode == "1":
        arr = arr.astype(np.uint8)
    if img.mode in ("LA", "PA", "RGBA"):
        arr = arr[..., :-1]
    if arr.ndim == 3:
        if not all(np.array_equal(arr[..., 0], arr[..., c]) for c in range(1, arr.shape[2])):
            raise MedsslError(f"{path}: mask has colour channels; expected a single-channel label image")
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise MedsslError(f"{path}: expected a 2D label image, got shape {tuple(arr.shape)}")
    return arr


def spatial_kind(files: list[Path]) -> int:
    """3 for NIfTI folders, 2 for image folders; a mix is an error naming the odd file."""
    dims = [3 if p.name.lower().endswith(NIFTI_SUFFIXES) else 2 for p in files]
    if len(set(dims)) > 1:
        odd = files[dims.index(3 if dims.count(3) < dims.count(2) else 2)]
        raise MedsslError(f"{odd}: folder mixes NIfTI volumes and 2D images")
    return dims[0]


def pair_by_name(images: Sequence[Path], masks: Sequence[Path]) -> list[tuple[Path, Path]]:
    """Pair images with masks of the same name (suffix may differ); unmatched files are errors."""
    by_stem = {}
    for m in masks:
        if stem(m) in by_stem:
            raise MedsslError(f"{m}: two masks share the name '{stem(m)}'")
        by_stem[stem(m)] = m
    pairs = []
    for img in images:
        if stem(img) not in by_stem:
            raise MedsslError(f"{img}: no mask with the same name in {masks[0].parent if masks else '?'}")
        pairs.append((img, by_stem.pop(stem(img))))
    if by_stem:
        extra = sorted(by_stem.values(), key=natural_key)[0]
        raise MedsslError(f"{extra}: mask has no image with the same name")
    return pairs


def pseudonym(patient_id: str) -> str:
    """One-way pseudonym of a patient id, for grouping only (never store the raw id)."""
    return "p" + hashlib.sha256(patient_id.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class LabelRow:
    path: Path
    label: int
    group: str  # pseudonymised patient id, or the file stem when the CSV has no patient column


def read_label_csv(csv_path: str | Path,
                   columns: Sequence[str] = ("path", "label", "patient_id")) -> list[LabelRow]:
    """Read ``path,label[,patient_id]`` rows; paths are relative to the CSV's folder.

    Args:
        csv_path: the CSV file.
        columns: names of the path, label and (optional) patient-id columns.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise MedsslError(f"{csv_path}: label CSV not found")
    if not 2 <= len(columns) <= 3:
        raise MedsslError(f"data.columns: expected 2 or 3 column names (path, label[, patient]), "
                          f"got {list(columns)}")
    path_col, label_col, *rest = columns
    patient_col = rest[0] if rest else None
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            for col in (path_col, label_col, *([patient_col] if patient_col else [])):
                if col not in header:
                    shown = " ".join(", ".join(map(str, header)).split())[:200]
                    raise MedsslError(f"{csv_path}: no column '{col}' (columns: {shown})")
            rows = []
            for line, rec in enumerate(reader, 2):
                if None in rec.values() or None in rec:  # DictReader's marks for short/long rows
                    got = sum(v is not None for k, v in rec.items() if k is not None)
                    got += len(rec.get(None) or [])
                    raise MedsslError(f"{csv_path}:{line}: expected {len(header)} fields, got {got}")
                rows.append(_label_row(csv_path, line, rec, path_col, label_col, patient_col))
    except UnicodeDecodeError as err:
        raise MedsslError(f"{csv_path}: not UTF-8 text (byte {err.start}); save the CSV as UTF-8") from err
    except csv.Error as err:
        raise MedsslError(f"{csv_path}: not a readable CSV ({_first_line(err)})") from err
    if not rows:
        raise MedsslError(f"{csv_path}: no rows")
    return rows


def _label_row(csv_path: Path, line: int, rec: dict, path_col: str, label_col: str,
               patient_col: str | None) -> LabelRow:
    rel = rec[path_col] or ""
    if PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).is_absolute() or PureWindowsPath(rel).drive:
        raise MedsslError(f"{csv_path}:{line}: image path {rel!r} is absolute; paths must be relative "
                          "to the CSV's folder")
    if ".." in PureWindowsPath(rel).parts:  # also splits on "/"
        raise MedsslError(f"{csv_path}:{line}: image path {rel!r} leaves the dataset folder ('..')")
    path = csv_path.parent / rel
    if not rel or not path.is_file():
        raise MedsslError(f"{csv_path}:{line}: image file {rel!r} not found")
    try:
        label = int(str(rec[label_col]).strip())
    except ValueError as err:
        raise MedsslError(f"{csv_path}:{line}: label {rec[label_col]!r} is not an integer") from err
    group = pseudonym(str(rec[patient_col])) if patient_col and rec[patient_col] else stem(path)
    return LabelRow(path, label, group)


def _first_line(err: Exception) -> str:
    return " ".join(str(err).split())[:80] or type(err).__name__


def read_any_image(path: Path, window: str = "soft_tissue") -> np.ndarray:
    """A 2D image as float32 ``[H, W]`` in [0, 1]: DICOM is windowed (CT preset) or min-max
    normalised (``window="none"``); other images are read grey-scale and divided by 255."""
    if path.name.lower().endswith(DICOM_SUFFIXES):
        hu = read_dicom(path).pixels
        return apply_window(hu, window) if window != "none" else normalize_intensity(hu)
    if not path.name.lower().endswith(IMAGE_SUFFIXES):
        kinds = ", ".join(IMAGE_SUFFIXES + DICOM_SUFFIXES)
        raise MedsslError(f"{path}: not an image file (expected {kinds})")
    return read_image(path).astype(np.float32) / 255.0


def resize_uint8(x01: np.ndarray, size: int) -> np.ndarray:
    """[H, W] floats in [0, 1] -> uint8 [size, size] (antialiased bilinear; aspect not kept)."""
    t = torch.from_numpy(np.ascontiguousarray(x01, dtype=np.float32))[None, None]
    if t.shape[2:] != (size, size):
        t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return to_uint8(t[0, 0].numpy())


def _read_row(rows: list[LabelRow], size: int, window: str, i: int) -> np.ndarray:
    return resize_uint8(read_any_image(rows[i].path, window), size)[None]


def load_csv_classification(csv_path: str | Path, columns: Sequence[str], size: int, window: str,
                            folds: int, test_fold: int, seed: int,
                            name: str | None = None, storage: str = "memory",
                            workers: int = 0) -> ClassificationData:
    """A labelled image CSV as :class:`~medssl.data.types.ClassificationData` with
    patient-level splits: fold ``test_fold`` is test, fold ``test_fold + 1`` validation, the rest
    train (folds from :func:`medssl.data.splits.group_kfold` over pseudonymised patient ids).

    Images are resized to ``size`` x ``size`` uint8 (``[N, 1, size, size]``); labels must be
    integers ``0..K-1``. The classification study uses it for ``data.format: csv``.
    """
    from medssl.data.splits import group_kfold

    csv_path = Path(csv_path)
    if not 0 <= test_fold < folds:
        raise MedsslError(f"data.test_fold {test_fold} is not in 0..{folds - 1}")
    rows = read_label_csv(csv_path, columns)
    labels = np.array([r.label for r in rows], dtype=np.int64)
    classes = np.unique(labels)
    if classes[0] != 0 or not np.array_equal(classes, np.arange(len(classes))) or len(classes) < 2:
        raise MedsslError(f"{csv_path}: labels must be 0..K-1 with K >= 2, found {classes.tolist()}")
    fold = group_kfold([r.group for r in rows], folds, seed)
    val_fold = (test_fold + 1) % folds
    parts = {"train": np.flatnonzero((fold != test_fold) & (fold != val_fold)),
             "val": np.flatnonzero(fold == val_fold), "test": np.flatnonzero(fold == test_fold)}
    order = [rows[i] for idx in parts.values() for i in idx]  # train, val, test: each split a slice
    key = cache_key([r.path for r in order], kind="csv", size=size, window=window, version=1)
    images = cached_stack(key, len(order), (1, size, size), partial(_read_row, order, size, window),
                          storage=storage, workers=workers)  # decoded once, in DataLoader workers
    bounds = np.cumsum([0, *(len(idx) for idx in parts.values())])
    splits = {k: Split(images[bounds[j]:bounds[j + 1]], torch.from_numpy(labels[idx]))
              for j, (k, idx) in enumerate(parts.items())}
    task = "binary-class" if len(classes) == 2 else "multi-class"
    return ClassificationData(name or csv_path.parent.name, 2, 1, size, task, tuple(map(str, classes)),
                              csv_path, **splits)
