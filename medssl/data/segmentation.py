"""A labelled segmentation dataset (NIfTI volumes or 2D image folders) for segmentation studies.

Cases are image/mask pairs matched by file name. Each image is normalised once (3D: per-volume
percentile clip + min-max to uint8; 2D 8-bit images are kept as stored) and kept at its own shape
for evaluation; :meth:`SegmentationData.stack` pads/crops cases to one shape for training batches.

:meth:`SegmentationData.pretrain_data` gives the unlabelled pool as
:class:`~medssl.data.types.PretrainData` (3D: whole volumes padded to ``shape``; 2D: non-overlapping
``size`` x ``size`` tiles of every image).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medssl.data.folder import (
    IMAGE_SUFFIXES,
    list_files,
    pair_by_name,
    read_image,
    read_mask,
    spatial_kind,
    stem,
)
from medssl.data.medmnist import DATA_DIR_ENV
from medssl.data.types import PretrainData
from medssl.data.volume import (
    NIFTI_SUFFIXES,
    normalize_intensity,
    pad_or_crop,
    read_nifti,
    resample,
    to_class_map,
    to_uint8,
)
from medssl.errors import MedsslError


@dataclass(eq=False)
class SegmentationData:
    """Labelled cases (native shapes) plus unlabelled images.

    Attributes:
        name: dataset name for reports.
        spatial_dims: 2 or 3.
        size: side of the pretraining views (and of the 2D pretraining tiles).
        shape: training shape every case is padded/cropped to.
        class_names: names of classes ``1..K-1`` (0 is background).
        cases, groups: case name and split group (patient) per case.
        images: uint8 ``[*S_i]`` per case; labels: uint8 class maps ``[*S_i]`` per case.
        spacings: voxel/pixel spacing per case (mm for NIfTI; 1.0 for images).
        unlabelled: extra uint8 images/volumes used for pretraining only.
    """

    name: str
    spatial_dims: int
    size: int
    shape: tuple[int, ...]
    class_names: list[str]
    cases: list[str]
    groups: list[str]
    images: list[np.ndarray]
    labels: list[np.ndarray]
    spacings: list[tuple[float, ...]]
    unlabelled: list[np.ndarray] = field(default_factory=list)
    in_channels: int = 1

    @property
    def num_classes(self) -> int:
        """Classes including background."""
        return len(self.class_names) + 1

    def __len__(self) -> int:
        return len(self.cases)

    def stack(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Cases padded/cropped to ``shape``: (uint8 ``[n, 1, *shape]``, uint8 ``[n, *shape]``)."""
        x = np.stack([pad_or_crop(self.images[i], self.shape) for i in indices])[:, None]
        y = np.stack([pad_or_crop(self.labels[i], self.shape) for i in indices])
        return torch.from_numpy(x), torch.from_numpy(y)

    def pretrain_data(self, exclude: Sequence[int] = ()) -> PretrainData:
        """The unlabelled pool: every case image not in ``exclude`` plus the unlabelled images."""
        skip = set(int(i) for i in exclude)
        arrays = [im for i, im in enumerate(self.images) if i not in skip] + list(self.unlabelled)
        if self.spatial_dims == 3:
            pool = np.stack([pad_or_crop(a, self.shape) for a in arrays])
        else:
            pool = np.concatenate([tiles(a, self.size) for a in arrays])
        return PretrainData(torch.from_numpy(pool)[:, None], self.spatial_dims, self.in_channels, self.size)


def tiles(image: np.ndarray, size: int) -> np.ndarray:
    """Non-overlapping ``size`` x ``size`` tiles of a 2D image (zero-padded up to a multiple)."""
    h, w = image.shape
    ph, pw = -h % size, -w % size
    padded = np.pad(image, ((0, ph), (0, pw)))
    ny, nx = padded.shape[0] // size, padded.shape[1] // size
    return padded.reshape(ny, size, nx, size).transpose(0, 2, 1, 3).reshape(-1, size, size)


def slice_volumes(images: list[np.ndarray], labels: list[np.ndarray], spacings: list[tuple],
                  cases: list[str], groups: list[str], axis: int) -> tuple:
    """3D cases -> 2D slices along ``axis``: the slices with any foreground become labelled cases
    (named ``<case>_<index>``, grouped with their volume so splits stay per patient); the
    background-only slices are returned separately for the unlabelled pretraining pool.

    Returns (images, labels, spacings, cases, groups, empty_slices).
    """
    if axis not in (0, 1, 2):
        raise MedsslError(f"segmentation.slice_axis must be 0, 1 or 2, got {axis}")
    out: tuple[list, ...] = ([], [], [], [], [], [])
    for x, y, sp, case, group in zip(images, labels, spacings, cases, groups, strict=True):
        xs, ys = np.moveaxis(x, axis, 0), np.moveaxis(y, axis, 0)
        sp2 = tuple(s for a, s in enumerate(sp) if a != axis)
        for k in range(len(xs)):
            if not ys[k].any():
                out[5].append(np.ascontiguousarray(xs[k]))
                continue
            for lst, v in zip(out[:5], (np.ascontiguousarray(xs[k]), np.ascontiguousarray(ys[k]), sp2,
                                        f"{case}_{k:03d}", group), strict=True):
                lst.append(v)
    return out


def resolve_root(dataset: str, path: str | None) -> Path:
    """``path`` if given, else ``$MEDSSL_DATA_DIR/<dataset>``."""
    if path:
        root = Path(path)
    elif os.environ.get(DATA_DIR_ENV):
        root = Path(os.environ[DATA_DIR_ENV]) / dataset
    else:
        raise MedsslError(f"dataset '{dataset}': set data.path or ${DATA_DIR_ENV}")
    if not root.is_dir():
        raise MedsslError(f"{root}: dataset folder not found (data.path or ${DATA_DIR_ENV}/{dataset})")
    return root


def _read_case(image: Path, mask: Path, dims: int, seg) -> tuple[np.ndarray, np.ndarray, tuple]:
    """One image/mask pair -> (uint8 image, uint8 class map, spacing)."""
    if dims == 3:
        x, spacing = read_nifti(image)
        y, _ = read_nifti(mask)
    else:
        x, y, spacing = read_image(image), read_mask(mask), (1.0, 1.0)
    if x.shape != y.shape:
        raise MedsslError(f"{mask}: mask shape {tuple(y.shape)} differs from image {image.name} "
                          f"shape {tuple(x.shape)}")
    y = to_class_map(y, seg.label_values, mask)
    if not np.all(np.isfinite(x)):
        raise MedsslError(f"{image}: image has non-finite values")
    if dims == 3:
        if seg.spacing:
            x, y = resample(x, spacing, seg.spacing), resample(y, spacing, seg.spacing, label=True)
            spacing = tuple(seg.spacing)
        x = to_uint8(normalize_intensity(x, "minmax", seg.clip_percentiles))
    return x, y, tuple(spacing)


def _read_unlabelled(path: Path, dims: int, seg) -> np.ndarray:
    if dims == 2:
        return read_image(path)
    x, spacing = read_nifti(path)
    if seg.spacing:
        x = resample(x, spacing, seg.spacing)
    return to_uint8(normalize_intensity(x, "minmax", seg.clip_percentiles))


def load_segmentation(name: str, root: Path, seg, size: int) -> SegmentationData:
    """Read every image/mask pair under ``root`` as configured by ``seg`` (a SegmentationConfig)."""
    suffixes = NIFTI_SUFFIXES + IMAGE_SUFFIXES
    pairs = pair_by_name(list_files(root / seg.images, suffixes), list_files(root / seg.masks, suffixes))
    if seg.max_cases:
        pairs = pairs[: seg.max_cases]
    dims = spatial_kind([p for pair in pairs for p in pair])
    images, labels, spacings = [], [], []
    for image, mask in pairs:
        x, y, spacing = _read_case(image, mask, dims, seg)
        images.append(x)
        labels.append(y)
        spacings.append(spacing)
    extra = []
    if seg.unlabelled:
        files = list_files(root / seg.unlabelled, suffixes)
        spatial_kind([*files, pairs[0][0]])
        extra = [_read_unlabelled(p, dims, seg) for p in files]
    cases = [stem(img) for img, _ in pairs]
    groups = [cases[i - i % seg.group_size] for i in range(len(cases))]  # blocks of neighbours
    if seg.slice_axis is not None:
        if dims != 3:
            raise MedsslError(f"{root / seg.images}: slice_axis is for 3D volumes, not 2D images")
        sliced = slice_volumes(images, labels, spacings, cases, groups, seg.slice_axis)
        images, labels, spacings, cases, groups, empty = sliced
        extra = [s for v in extra for s in np.moveaxis(v, seg.slice_axis, 0)] + empty
        dims = 2
    configured = seg.shape
    if configured and seg.slice_axis is not None and len(configured) == 3:  # a 3D shape: slice it too
        configured = [n for a, n in enumerate(configured) if a != seg.slice_axis]
    shape = tuple(configured) if configured else tuple(int(n) for n in np.max([x.shape for x in images], 0))
    if len(shape) != dims:
        raise MedsslError(f"segmentation.shape {list(shape)} does not match {dims}D data")
    return SegmentationData(name, dims, size, shape, list(seg.class_names), cases, groups, images,
                            labels, spacings, extra)
