"""Write small DICOM series with pydicom for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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


def _enhanced_file(path: Path, modality: str, rows: int, columns: int, frames: int, signed: bool) -> FileDataset:
    """The header of a 16-bit monochrome enhanced multi-frame file (Enhanced MR Image Storage) at ``path``, without
    its functional groups and pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"  # Enhanced MR Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.PatientID = modality, generate_uid(), generate_uid(), "1"
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, int(signed)
    return ds


def write_enhanced(path: Path, volume: np.ndarray, origin_lps=(10.0, -20.0, 30.0), spacing: float = 3.0,
                   orientation=(0.0, 1.0, 0.0, 0.0, 0.0, -1.0)) -> np.ndarray:
    """Write ``volume`` (X = columns, Y = rows, Z = frames) as one enhanced multi-frame MR file; returns the RAS
    affine it describes."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    row, col = np.array(orientation[:3]), np.array(orientation[3:])
    normal = np.cross(row, col)
    ds = _enhanced_file(path, "MR", volume.shape[1], volume.shape[0], volume.shape[2], signed=True)
    measures, plane, shared = Dataset(), Dataset(), Dataset()
    measures.PixelSpacing, measures.SliceThickness, measures.SpacingBetweenSlices = [1.0, 1.0], spacing, spacing
    plane.ImageOrientationPatient = list(orientation)
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = Sequence([measures]), Sequence([plane])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for k in range(volume.shape[2]):
        frame, position = Dataset(), Dataset()
        position.ImagePositionPatient = [float(v) for v in np.array(origin_lps) + spacing * k * normal]
        frame.PlanePositionSequence = Sequence([position])
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = np.ascontiguousarray(volume.astype(np.int16).transpose(2, 1, 0)).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2], affine[:3, 3] = row, col, spacing * normal, origin_lps
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


def write_frames(path: Path, frames: np.ndarray, positions, orientations, slopes=None, spacing=(1.0, 1.0),
                 modality: str = "MR") -> None:
    """Write ``frames`` (F, rows, cols) as one enhanced multi-frame file with per-frame functional groups: each
    frame's ImagePositionPatient, ImageOrientationPatient and (``slopes``) RescaleSlope, as scanners write them."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = _enhanced_file(path, modality, frames.shape[1], frames.shape[2], frames.shape[0], signed=False)
    measures, shared = Dataset(), Dataset()
    measures.PixelSpacing = list(spacing)
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    groups = []
    for k in range(frames.shape[0]):
        group, position, plane = Dataset(), Dataset(), Dataset()
        position.ImagePositionPatient = [float(v) for v in positions[k]]
        plane.ImageOrientationPatient = [float(v) for v in orientations[k]]
        group.PlanePositionSequence, group.PlaneOrientationSequence = Sequence([position]), Sequence([plane])
        if slopes is not None:
            transform = Dataset()
            transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = slopes[k], 0, "US"
            group.PixelValueTransformationSequence = Sequence([transform])
        groups.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(groups)
    ds.PixelData = np.ascontiguousarray(frames.astype(np.uint16)).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
