"""The declared data types that loaders return and studies read.

- :class:`ClassificationData`: labelled images in train/val/test splits. Returned by
  :func:`medssl.data.medmnist.load_medmnist` (MedMNIST ``.npz``) and
  :func:`medssl.data.folder.load_csv_classification` (a label CSV of images or DICOM files).
- :class:`PretrainData`: an unlabelled pool for pretraining. Returned by
  :meth:`ClassificationData.pretrain_data`, by
  :meth:`medssl.data.segmentation.SegmentationData.pretrain_data` (NIfTI volumes, image folders)
  and by the Python API for a user's tensor or folder.
- :class:`medssl.data.segmentation.SegmentationData` (labelled cases at their native shapes) lives
  with its reader, because padding and tiling are part of its contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from medssl.errors import MedsslError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True, eq=False)
class Split:
    """One split: uint8 channel-first images and int64 labels.

    Attributes:
        images: ``[N, C, H, W]`` (2D) or ``[N, C, D, H, W]`` (3D), dtype uint8.
        labels: ``[N]`` int64, or ``[N, L]`` int64 (0/1) for multi-label tasks.
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass(frozen=True, eq=False)
class PretrainData:
    """Unlabelled images to pretrain on.

    Attributes:
        images: uint8 ``[N, C, *S]``, ``S`` at least ``size`` per side.
        spatial_dims: 2 or 3.
        in_channels: ``C``.
        size: side of the pretraining views.
        val: labelled validation images to choose the pretraining epoch by
            (``pretrain.select_on: val_knn``), or None.
        num_classes: classes (labels, multi-label) of ``val``.
    """

    images: torch.Tensor
    spatial_dims: int
    in_channels: int
    size: int
    val: Split | None = None
    num_classes: int = 0

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass(frozen=True, eq=False)
class ClassificationData:
    """A labelled image-classification dataset with fixed train/val/test splits.

    Attributes:
        name: dataset name for runs and reports (the MedMNIST flag, or the CSV's folder).
        spatial_dims, in_channels, size: image geometry (square/cubic ``size`` per side).
        task: ``binary-class``, ``multi-class``, ``ordinal-regression`` or ``multi-label, binary-class``.
        class_names: one name per class (per label for multi-label tasks), index order.
        path: the file the data was read from.
        train, val, test: the splits.
    """

    name: str
    spatial_dims: int
    in_channels: int
    size: int
    task: str
    class_names: tuple[str, ...]
    path: Path
    train: Split
    val: Split
    test: Split

    @property
    def num_classes(self) -> int:
        """Number of classes (number of labels for multi-label tasks)."""
        return len(self.class_names)

    @property
    def multi_label(self) -> bool:
        """True for multi-label tasks (labels are ``[N, L]``)."""
        return self.task.startswith("multi-label")

    def split(self, name: str) -> Split:
        """Return the split called ``name`` (train, val or test)."""
        if name not in SPLITS:
            raise MedsslError(f"unknown split '{name}'; expected one of: {', '.join(SPLITS)}")
        return getattr(self, name)

    def pretrain_data(self) -> PretrainData:
        """The training images (never val or test) as the unlabelled pretraining pool, with the
        validation split for choosing the pretraining epoch (``pretrain.select_on``)."""
        return PretrainData(self.train.images, self.spatial_dims, self.in_channels, self.size,
                            self.val, self.num_classes)
