"""Medical volume readers: NIfTI (nibabel) and DICOM (pydicom); intensity normalisation, windowing,
resampling and fixed-shape padding.

Arrays keep the on-disk voxel order (NIfTI ``i, j, k``; DICOM series ``slice, row, column``); no
reorientation is done. Every reader error is a one-line :class:`MedsslError` naming the file.

DICOM privacy: only the tags needed for pixels and geometry are read, and error messages carry
the file path and the exception *type* only, never header values or pydicom's message text (which
can quote them), so patient-identifying values (PatientName, PatientID, PatientBirthDate, ...)
never reach logs, reports or run directories.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medssl.errors import MedsslError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
# CT window presets (centre, width) in HU, as in common radiology viewers.
WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "soft_tissue": (40.0, 400.0),
    "bone": (400.0, 1800.0),
}


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def read_nifti(path: str | Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """Read a 3D NIfTI volume (a trailing singleton 4th axis is dropped).

    Returns:
        (array ``[X, Y, Z]`` in the stored dtype after NIfTI scaling, voxel spacing in mm).
    """
    import nibabel as nib

    try:
        img = nib.load(str(path))
        _check_nifti_size(Path(path), img)
        arr = np.asanyarray(img.dataobj)
        spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
    except MedsslError:
        raise
    except Exception as err:  # nibabel/gzip/zlib raise many types for corrupt files
        raise MedsslError(f"{path}: not a readable NIfTI file ({type(err).__name__})") from err
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3 or min(arr.shape) < 1:
        raise MedsslError(f"{path}: expected a 3D volume, got shape {tuple(arr.shape)}")
    return arr, spacing


_MAX_VOLUME_BYTES = 8 << 30  # a header declaring more is taken as corrupt, not allocated
_VERIFY_GZ_ABOVE = 64 << 20  # larger gzipped volumes are checked to hold their data before reading


def _check_nifti_size(path: Path, img) -> None:
    """Refuse a header whose declared voxel data is absurd or absent, before memory is allocated
    for it (nibabel allocates the whole array before reading a .nii.gz)."""
    need = int(np.prod(img.shape, dtype=np.float64)) * img.get_data_dtype().itemsize
    if need > _MAX_VOLUME_BYTES:
        raise MedsslError(f"{path}: header declares shape {tuple(img.shape)} ({need / 2**30:.0f} GiB); "
                          "corrupt header?")
    if str(path).lower().endswith(".gz") and need > _VERIFY_GZ_ABOVE:
        import gzip

        want, got = need + int(img.dataobj.offset), 0
        try:
            with gzip.open(path, "rb") as fh:
                while got < want and (chunk := fh.read(16 << 20)):
                    got += len(chunk)
        except (OSError, EOFError) as err:
            raise MedsslError(f"{path}: not a readable NIfTI file ({type(err).__name__})") from err
        if got < want:
            raise MedsslError(f"{path}: truncated: the header declares {want} bytes, the file holds {got}")


def to_class_map(arr: np.ndarray, values: Sequence[int], path: str | Path) -> np.ndarray:
    """Map raw label values to class indices: ``values[c]`` -> ``c``; uint8 of ``arr``'s shape.

    Float label maps (some NIfTI files) are accepted when every value is a whole number. Values
    not in ``values`` are an error naming the file.
    """
    integer = np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_
    if not integer and not (np.all(np.isfinite(arr)) and np.array_equal(arr, np.round(arr))):
        raise MedsslError(f"{path}: label map has non-integer values")
    arr = np.asarray(arr).astype(np.int64)
    found = np.unique(arr)
    unexpected = np.setdiff1d(found, np.asarray(values, dtype=np.int64))
    if unexpected.size:
        shown = ", ".join(str(v) for v in unexpected[:5])
        raise MedsslError(f"{path}: unexpected label values [{shown}] (expected {list(values)})")
    out = np.zeros(arr.shape, dtype=np.uint8)
    for cls, value in enumerate(values):
        out[arr == value] = cls
    return out


def normalize_intensity(x: np.ndarray, mode: str = "minmax",
                        percentiles: Sequence[float] = (0.5, 99.5)) -> np.ndarray:
    """Per-volume intensity normalisation: percentile clip, then min-max to [0, 1] or z-score.

    Written with numpy (three lines) rather than MONAI's ``ScaleIntensityRangePercentiles``, which
    round-trips through tensors and warns on constant volumes; constant volumes give zeros here.

    Args:
        x: an image or volume of any shape and dtype.
        mode: ``"minmax"`` (-> [0, 1]) or ``"zscore"`` (zero mean, unit std after clipping).
        percentiles: lower and upper clip percentiles.
    """
    if mode not in ("minmax", "zscore"):
        raise MedsslError(f"intensity normalisation must be minmax or zscore, got '{mode}'")
    x = np.asarray(x, dtype=np.float32)
    lo, hi = np.percentile(x, percentiles)
    x = np.clip(x, lo, hi)
    if mode == "minmax":
        return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    std = x.std()
    return (x - x.mean()) / std if std > 0 else np.zeros_like(x)


def to_uint8(x01: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8 0..255 (rounded)."""
    return np.round(np.clip(x01, 0.0, 1.0) * 255.0).astype(np.uint8)


def resample(arr: np.ndarray, spacing: Sequence[float], target: Sequence[float],
             label: bool = False) -> np.ndarray:
    """Resample a 2D/3D array from ``spacing`` to ``target`` spacing (same units).

    Images use (bi/tri)linear interpolation, label maps nearest neighbour. Done with
    ``F.interpolate`` on the array grid: MONAI's ``Spacing`` needs an affine and MetaTensors,
    which these plain arrays do not carry.
    """
    if len(spacing) != arr.ndim or len(target) != arr.ndim:
        raise MedsslError(f"resample: spacing {list(target)} does not match a {arr.ndim}D array")
    shape = [max(1, round(n * s / t)) for n, s, t in zip(arr.shape, spacing, target, strict=True)]
    if shape == list(arr.shape):
        return arr
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None, None]
    if label:
        return F.interpolate(t, size=shape, mode="nearest-exact")[0, 0].numpy().astype(arr.dtype)
    mode = "bilinear" if arr.ndim == 2 else "trilinear"
    return F.interpolate(t, size=shape, mode=mode, align_corners=False)[0, 0].numpy()


def pad_or_crop(arr: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Centre zero-pad or centre-crop the trailing ``len(shape)`` axes of ``arr`` to ``shape``."""
    from monai.transforms import ResizeWithPadOrCrop

    lead = arr.shape[: arr.ndim - len(shape)]
    x = arr.reshape(-1, *arr.shape[len(lead):])  # MONAI wants a channel axis
    out = ResizeWithPadOrCrop(list(shape))(x)
    out = out.numpy() if isinstance(out, torch.Tensor) else np.asarray(out)
    return out.reshape(*lead, *shape).astype(arr.dtype)


# --------------------------------------------------------------------------- DICOM


@dataclass(frozen=True)
class DicomSlice:
    """One DICOM image: modality-LUT pixels (HU for CT) and geometry; no patient tags.

    Attributes:
        pixels: float32 ``[H, W]``.
        spacing: (row, column) pixel spacing in mm, or None when absent.
        position: ImagePositionPatient (x, y, z) in mm, or None.
        orientation: ImageOrientationPatient (6 direction cosines), or None.
        instance: InstanceNumber, or None.
        thickness: SliceThickness in mm, or None.
    """

    pixels: np.ndarray
    spacing: tuple[float, float] | None
    position: tuple[float, ...] | None
    orientation: tuple[float, ...] | None
    instance: int | None
    thickness: float | None


def _floats(ds, keyword: str) -> tuple[float, ...] | None:
    """A numeric (possibly multi-valued) tag as floats; None when absent or not numeric."""
    from pydicom.multival import MultiValue

    value = ds.get(keyword)
    if value is None or value == "":
        return None
    values = list(value) if isinstance(value, (MultiValue, list, tuple)) else [value]
    try:
        return tuple(float(v) for v in values)
    except (TypeError, ValueError):
        return None


def read_dicom(path: str | Path) -> DicomSlice:
    """Read one single-frame DICOM file; apply the modality LUT (RescaleSlope/Intercept -> HU)."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path))
    except Exception as err:  # never echo pydicom's message: it can quote header values
        raise MedsslError(f"{path}: not a readable DICOM file ({type(err).__name__})") from err
    try:  # pydicom parses elements lazily: a damaged one fails on first access
        return _dicom_slice(ds, path)
    except MedsslError:
        raise
    except Exception as err:
        raise MedsslError(f"{path}: DICOM header cannot be parsed ({type(err).__name__})") from err


def _dicom_slice(ds, path: str | Path) -> DicomSlice:
    from pydicom.pixels import apply_modality_lut

    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise MedsslError(f"{path}: DICOM file has no pixel data")
    try:
        raw = ds.pixel_array
        pixels = np.asarray(apply_modality_lut(raw, ds), dtype=np.float32)
    except Exception as err:
        raise MedsslError(f"{path}: DICOM pixel data cannot be decoded ({type(err).__name__})") from err
    if pixels.ndim != 2:
        raise MedsslError(f"{path}: expected a single-frame greyscale DICOM image, got pixel "
                          f"array shape {tuple(pixels.shape)}")
    spacing = _floats(ds, "PixelSpacing")
    instance = _floats(ds, "InstanceNumber")
    thickness = _floats(ds, "SliceThickness")
    return DicomSlice(pixels, spacing[:2] if spacing and len(spacing) >= 2 else None,
                      _floats(ds, "ImagePositionPatient"), _floats(ds, "ImageOrientationPatient"),
                      int(instance[0]) if instance else None, thickness[0] if thickness else None)


def _slice_order(slices: list[DicomSlice], paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Sort keys: position along the slice normal when every slice has geometry, else InstanceNumber."""
    if all(s.position and s.orientation and len(s.orientation) == 6 for s in slices):
        normal = np.cross(slices[0].orientation[:3], slices[0].orientation[3:])
        keys = np.array([np.dot(s.position[:3], normal) for s in slices])
    elif all(s.instance is not None for s in slices):
        keys = np.array([float(s.instance) for s in slices])
    else:
        raise MedsslError(f"{paths[0].parent}: DICOM series lacks ImagePositionPatient and "
                          "InstanceNumber; cannot order its slices")
    order = np.argsort(keys, kind="stable")
    if len(keys) > 1 and np.any(np.diff(keys[order]) == 0):
        dup = paths[order[int(np.flatnonzero(np.diff(keys[order]) == 0)[0]) + 1]]
        raise MedsslError(f"{dup}: two slices of the series share one position")
    return order, keys[order]


def read_dicom_series(paths: Sequence[str | Path]) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Read single-frame DICOM files of one series into a volume sorted along the slice normal.

    Returns:
        (float32 volume ``[D, H, W]`` in modality units (HU for CT), spacing (dz, dy, dx) in mm;
        dz is the median gap between sorted slice positions, else SliceThickness, else 1).
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise MedsslError("read_dicom_series: no files given")
    slices = [read_dicom(p) for p in paths]
    first = slices[0]
    for s, p in zip(slices, paths, strict=True):
        if s.pixels.shape != first.pixels.shape:
            raise MedsslError(f"{p}: slice shape {s.pixels.shape} differs from the series' "
                              f"{first.pixels.shape}")
        for what, mine, theirs in (("orientation", s.orientation, first.orientation),
                                   ("pixel spacing", s.spacing, first.spacing)):
            if not _same_geometry(mine, theirs):
                raise MedsslError(f"{p}: slice {what} {_fmt(mine)} differs from the series' "
                                  f"{_fmt(theirs)} ({paths[0].name}); one series per folder")
    order, keys = _slice_order(slices, paths)
    volume = np.stack([slices[i].pixels for i in order])
    dz = float(np.median(np.diff(keys))) if len(keys) > 1 else (slices[0].thickness or 1.0)
    dy, dx = slices[0].spacing or (1.0, 1.0)
    return volume, (abs(dz), float(dy), float(dx))


def _same_geometry(a: tuple[float, ...] | None, b: tuple[float, ...] | None) -> bool:
    if a is None or b is None:
        return a is b
    return len(a) == len(b) and bool(np.allclose(a, b, atol=1e-4))


def _fmt(values: tuple[float, ...] | None) -> str:
    return "absent" if values is None else "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def read_dicom_dir(folder: str | Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Read every ``*.dcm`` file in ``folder`` as one series (see :func:`read_dicom_series`)."""
    folder = Path(folder)
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".dcm") if folder.is_dir() else []
    if not paths:
        raise MedsslError(f"{folder}: no .dcm files found")
    return read_dicom_series(paths)


def apply_window(hu: np.ndarray, window: str | tuple[float, float]) -> np.ndarray:
    """CT windowing: clip HU to ``centre ± width / 2`` and map it to [0, 1] (float32).

    Args:
        hu: array in Hounsfield units.
        window: a preset name from :data:`WINDOWS` (lung, soft_tissue, bone) or (centre, width).
    """
    if isinstance(window, str):
        if window not in WINDOWS:
            raise MedsslError(f"unknown CT window '{window}'; known: {', '.join(WINDOWS)}")
        window = WINDOWS[window]
    centre, width = (float(v) for v in window)
    if width <= 0:
        raise MedsslError(f"CT window width must be positive, got {width}")
    return np.clip((np.asarray(hu, np.float32) - (centre - width / 2)) / width, 0.0, 1.0)
