"""Unlabelled folders as pretraining pools, read lazily through the cache (``medssl.data.cache``).

A folder (searched recursively) holds grey 2D images (PNG/JPG/TIFF/BMP, DICOM slices) or NIfTI
volumes, not both; with ``series=True``, every folder of ``.dcm`` files is one CT/MR volume
(``medssl.data.volume.read_dicom_dir``: slices sorted along the normal). Every item becomes uint8
``[1, *S]``: volumes are clipped to their 0.5-99.5 percentiles and min-max scaled, DICOM slices
windowed (soft tissue), 8-bit images kept. With
``size`` each item is resized to ``size`` per side; without it, items are centre-padded/cropped to
the largest shape, found from the file headers alone (no decoding).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medssl.data.cache import cache_key, cached_stack
from medssl.data.folder import DICOM_SUFFIXES, IMAGE_SUFFIXES, list_files, read_any_image, spatial_kind
from medssl.data.types import PretrainData
from medssl.data.volume import (
    NIFTI_SUFFIXES,
    normalize_intensity,
    pad_or_crop,
    read_dicom_dir,
    read_nifti,
    to_uint8,
)
from medssl.errors import MedsslError

POOL_SUFFIXES = NIFTI_SUFFIXES + IMAGE_SUFFIXES + DICOM_SUFFIXES


def resize_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``[N, C, *S]`` -> uint8 ``[N, C, size, ...]`` (bi/trilinear; antialiased in 2D)."""
    if all(s == size for s in x.shape[2:]):
        return x
    mode = "bilinear" if x.dim() == 4 else "trilinear"
    y = F.interpolate(x.float() / 255, size=[size] * (x.dim() - 2), mode=mode, align_corners=False,
                      antialias=x.dim() == 4)
    return torch.round(y.clamp(0, 1) * 255).to(torch.uint8)


def header_shape(path: Path) -> tuple[int, ...]:
    """Spatial shape of an image or volume from its header, without decoding the pixels."""
    name = path.name.lower()
    try:
        if name.endswith(NIFTI_SUFFIXES):
            import nibabel as nib

            return tuple(int(s) for s in nib.load(str(path)).shape[:3])
        if name.endswith(DICOM_SUFFIXES):
            import pydicom

            ds = pydicom.dcmread(path, stop_before_pixels=True)
            return int(ds.Rows), int(ds.Columns)
        from PIL import Image

        with Image.open(path) as img:
            return img.size[1], img.size[0]
    except Exception as err:
        raise MedsslError(f"{path}: cannot read the image header ({type(err).__name__})") from err


def read_item(path: Path, size: int | None, shape: tuple[int, ...]) -> np.ndarray:
    """One file (or DICOM series folder) -> uint8 ``[1, *S]`` (``S`` = ``size`` per side, else ``shape``)."""
    if path.is_dir():
        x = to_uint8(normalize_intensity(read_dicom_dir(path)[0]))
    elif path.name.lower().endswith(NIFTI_SUFFIXES):
        x = to_uint8(normalize_intensity(read_nifti(path)[0]))
    else:
        x = to_uint8(read_any_image(path))
    if size is not None:
        return resize_batch(torch.from_numpy(x)[None, None], size)[0].numpy()
    return pad_or_crop(x, shape)[None]


def folder_pool(folder: Path, size: int | None = None, *, storage: str = "auto", workers: int = 2,
                series: bool = False) -> PretrainData:
    """Every image or volume under ``folder`` as a pretraining pool (see the module docstring)."""
    files = list_files(folder, DICOM_SUFFIXES if series else POOL_SUFFIXES, recursive=True)
    if series:  # one volume per folder of slices; its shape is (slices, rows, columns)
        slices: dict[Path, list[Path]] = {}
        for f in files:
            slices.setdefault(f.parent, []).append(f)
        files, dims = list(slices), 3
        shapes = [(len(s), *header_shape(s[0])) for s in slices.values()]
    else:
        dims = spatial_kind(files)
        shapes = [header_shape(p) for p in files] if size is None else []
    if len(files) < 2:
        raise MedsslError(f"{folder}: {len(files)} image(s); pretraining needs at least 2")
    shape = (size,) * dims if size is not None else tuple(int(n) for n in np.max(shapes, 0))
    key = cache_key(_leaves(files), kind="folder_pool", size=size, shape=shape, series=series, version=1)
    images = cached_stack(key, len(files), (1, *shape), partial(_read, files, size, shape),
                          storage=storage, workers=workers)
    return PretrainData(images, dims, 1, size or min(shape))


def _leaves(items: list[Path]) -> list[Path]:
    """The files behind the items (a series folder's slices) for the cache key."""
    return [f for p in items for f in (sorted(p.iterdir()) if p.is_dir() else [p])]


def _read(files: list[Path], size: int | None, shape: tuple[int, ...], i: int) -> np.ndarray:
    return read_item(files[i], size, shape)
