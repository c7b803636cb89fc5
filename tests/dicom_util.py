"""Write small DICOM series with pydicom for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid


def write_series(folder: Path, volume: np.ndarray, origin_lps=(-50.0, -60.0, 10.0), spacing=(0.8, 0.9, 2.0),
                 description: str = "T1", modality: str = "MR", uid: str | None = None) -> str:
    """Write ``volume`` (Z, rows, cols) as axial slices; returns the SeriesInstanceUID."""
    folder.mkdir(parents=True, exist_ok=True)
    uid = uid or generate_uid()
    study = generate_uid()
    for k, plane in enumerate(volume):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"{description}_{k:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesDescription = modality, description
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, uid, study
        ds.PatientName, ds.PatientID, ds.InstanceNumber, ds.SeriesNumber = "Test", "1", k + 1, 1
        ds.ImagePositionPatient = [origin_lps[0], origin_lps[1], origin_lps[2] + k * spacing[2]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [spacing[1], spacing[0]]  # row spacing (y), column spacing (x)
        ds.SliceThickness = spacing[2]
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = plane.astype(np.uint16).tobytes()
        ds.save_as(ds.filename, enforce_file_format=True)
    return uid
