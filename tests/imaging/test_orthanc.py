"""Interoperability with Orthanc: studies go both ways, over DICOMweb and DIMSE, unchanged."""

from __future__ import annotations

import io
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from careplane.imaging.peers import add_remote_ae
from careplane.platform.db import Database
from careplane.security import Role
from tests.conftest import Account, Accounts
from tests.imaging.conftest import PYDICOM_DATA, make_instance, multipart, split_multipart
from tests.imaging.orthanc import Orthanc, available, running_orthanc
from tests.support.servers import free_port, running_server

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not available(), reason="apt-get install orthanc "
                                 "orthanc-dicomweb")]


@dataclass
class Peers:
    careplane: str
    careplane_dicom_port: int
    orthanc: Orthanc
    account: Account


@pytest.fixture
def peers(db_url: str, db: Database, tmp_path: Path) -> Iterator[Peers]:
    accounts = Accounts(db)
    account = accounts.make("pacs", Role.radiologist, org="org-a")
    dicom_port = free_port()
    with running_server(db_url, tmp_path / "careplane",
                        extra_env={"CAREPLANE_DICOM_PORT": str(dicom_port)}) as base, \
            running_orthanc(tmp_path / "orthanc",
                            modalities={"careplane": ("CAREPLANE", "127.0.0.1", dicom_port)},
                            dicomweb_servers={"careplane": (f"{base}/dicomweb/",
                                                            account.headers)}) as orthanc:
        with db.session() as session:
            add_remote_ae(session, accounts.org("org-a"), "ORTHANC", host="127.0.0.1",
                          port=orthanc.dicom_port)
        yield Peers(base, dicom_port, orthanc, account)


def _orthanc_file(orthanc: Orthanc, sop_uid: str) -> bytes:
    found = httpx.post(f"{orthanc.url}/tools/find", json={
        "Level": "Instance", "Query": {"SOPInstanceUID": sop_uid}}).json()
    assert len(found) == 1, f"Orthanc does not hold {sop_uid}"
    return httpx.get(f"{orthanc.url}/instances/{found[0]}/file").content


def _careplane_file(peers: Peers, ds: pydicom.Dataset) -> bytes:
    response = httpx.get(
        f"{peers.careplane}/dicomweb/studies/{ds.StudyInstanceUID}/series/"
        f"{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}",
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*',
                 **peers.account.headers})
    assert response.status_code == 200, response.text
    ((_, body),) = split_multipart(response.content, response.headers["content-type"])
    return body


def _dataset_bytes(part10: bytes) -> bytes:
    """The data set of a Part-10 file, without preamble and file meta information."""
    length = int.from_bytes(part10[140:144], "little")  # (0002,0000) group length value
    return part10[144 + length:]


def _files() -> list[bytes]:
    study = generate_uid()
    return [(PYDICOM_DATA / "RG1_J2KR.dcm").read_bytes(),
            make_instance(study_uid=study, instance_number=1, patient_id="ORTH-1"),
            make_instance(study_uid=study, instance_number=2, patient_id="ORTH-1", frames=2)]


def test_careplane_to_orthanc(peers: Peers) -> None:
    files = _files()
    body, headers = multipart(files)
    assert httpx.post(f"{peers.careplane}/dicomweb/studies", content=body,
                      headers={**headers, **peers.account.headers}).status_code == 200
    datasets = [pydicom.dcmread(io.BytesIO(f)) for f in files]
    # Orthanc pulls the chest study over DICOMweb (WADO-RS) ...
    pulled = httpx.post(f"{peers.orthanc.dicomweb}/servers/careplane/retrieve", json={
        "Resources": [{"Study": datasets[0].StudyInstanceUID}]}, timeout=120)
    assert pulled.status_code == 200, pulled.text
    assert _orthanc_file(peers.orthanc, datasets[0].SOPInstanceUID) == files[0]
    # ... and careplane sends the other study by C-MOVE (careplane as the SCP).
    moved = subprocess.run(
        ["movescu", "-aet", "ORTHANC", "-aec", "CAREPLANE", "-aem", "ORTHANC", "-S",
         "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={datasets[1].StudyInstanceUID}",
         "127.0.0.1", str(peers.careplane_dicom_port)],
        capture_output=True, text=True, timeout=120, check=False)
    assert moved.returncode == 0, moved.stderr
    for raw, ds in zip(files[1:], datasets[1:], strict=True):
        assert _dataset_bytes(_orthanc_file(peers.orthanc, ds.SOPInstanceUID)) == \
            _dataset_bytes(raw)


def test_orthanc_to_careplane(peers: Peers) -> None:
    files = _files()
    ids = []
    for raw in files:
        uploaded = httpx.post(f"{peers.orthanc.url}/instances", content=raw)
        assert uploaded.status_code == 200, uploaded.text
        ids.append(uploaded.json()["ID"])
    datasets = [pydicom.dcmread(io.BytesIO(f)) for f in files]
    # Orthanc pushes the chest study over STOW-RS ...
    stowed = httpx.post(f"{peers.orthanc.dicomweb}/servers/careplane/stow",
                        json={"Resources": [ids[0]], "Synchronous": True}, timeout=120)
    assert stowed.status_code == 200, stowed.text
    assert _careplane_file(peers, datasets[0]) == files[0]
    # ... and the other study by C-STORE.
    stored = httpx.post(f"{peers.orthanc.url}/modalities/careplane/store",
                        json={"Resources": ids[1:], "Synchronous": True}, timeout=120)
    assert stored.status_code == 200, stored.text
    for raw, ds in zip(files[1:], datasets[1:], strict=True):
        assert _dataset_bytes(_careplane_file(peers, ds)) == _dataset_bytes(raw)
    # Orthanc queries careplane (C-FIND) and finds what it sent.
    found = httpx.post(f"{peers.orthanc.url}/modalities/careplane/query", json={
        "Level": "Study", "Query": {"PatientID": "ORTH-1"}}).json()
    answers = httpx.get(f"{peers.orthanc.url}/queries/{found['ID']}/answers?expand").json()
    assert [a["0020,000d"]["Value"] for a in answers] == [datasets[1].StudyInstanceUID]
