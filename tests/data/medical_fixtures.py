"""Writers for tiny NIfTI, DICOM and PNG files in tmp dirs (imported by tests in tests/data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

PHI = {"PatientName": "Doe^Jane^Q", "PatientID": "PHI-ID-7731", "PatientBirthDate": "19450317",
       "PatientAddress": "12 Secret Lane", "OtherPatientIDs": "MRN-556677"}


def write_nifti(path: Path, arr: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> Path:
    import nibabel as nib

    img = nib.Nifti1Image(arr, np.diag([*spacing, 1.0]))
    img.header.set_zooms(tuple(spacing) + (1.0,) * (arr.ndim - len(spacing)))
    nib.save(img, str(path))
    return path


def write_dicom(path: Path, pixels: np.ndarray, *, slope: float = 1.0, intercept: float = 0.0,
                z: float | None = None, instance: int | None = None, phi: bool = True,
                pixel_data: bool = True, spacing=(0.5, 0.7)) -> Path:
    """A CT slice with stored values ``pixels`` (uint16), rescale tags and, by default, PHI tags."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    if phi:
        for key, value in PHI.items():
            setattr(ds, key, value)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelSpacing = list(spacing)
    if z is not None:
        ds.ImagePositionPatient = [0.0, 0.0, z]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    if instance is not None:
        ds.InstanceNumber = instance
    if pixel_data:
        ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def write_png(path: Path, arr: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(path)
    return path
