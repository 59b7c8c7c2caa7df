"""The DIMSE listener against real dcmtk tools: echoscu, storescu, findscu, getscu, movescu."""

from __future__ import annotations

import io
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from careplane.imaging.config import ImagingSettings
from careplane.imaging.dimse import DimseServer, add_remote_ae, start_dimse
from careplane.imaging.models import DicomInstance, DicomStudy
from careplane.platform.blobs import LocalBlobStore
from careplane.platform.db import Database
from careplane.settings import Settings
from tests.conftest import Accounts
from tests.imaging.conftest import PYDICOM_DATA, make_instance

pytestmark = pytest.mark.skipif(shutil.which("storescu") is None,
                                reason="dcmtk is not installed (apt-get install dcmtk)")


@pytest.fixture
def listener(settings: Settings, db: Database, blobs: LocalBlobStore,
             accounts: Accounts) -> Iterator[DimseServer]:
    org = accounts.org("org-a")
    other = accounts.org("org-b")
    with db.session() as session:
        add_remote_ae(session, org, "MODALITY1")
        add_remote_ae(session, other, "OTHERPACS")
    server = start_dimse(settings, db, blobs, host="127.0.0.1", port=0,
                         config=ImagingSettings(ae_title="CAREPLANE"))
    try:
        yield server
    finally:
        server.stop()


def _run(tool: str, server: DimseServer, *args: str, aet: str = "MODALITY1",
         files: tuple[Path, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool, "-aet", aet, "-aec", "CAREPLANE", *args, server.host,
                           str(server.port), *map(str, files)], capture_output=True,
                          text=True, timeout=120, check=False)


def test_echo_and_unknown_callers_are_rejected(listener: DimseServer) -> None:
    assert _run("echoscu", listener).returncode == 0
    refused = _run("echoscu", listener, aet="STRANGER")
    assert refused.returncode != 0
    assert "Rejected" in refused.stdout + refused.stderr


def test_store_find_get(listener: DimseServer, db: Database, blobs: LocalBlobStore,
                        accounts: Accounts, tmp_path: Path) -> None:
    study = generate_uid()
    files = []
    for number in (1, 2):
        path = tmp_path / f"in{number}.dcm"
        path.write_bytes(make_instance(study_uid=study, patient_id="PID-77",
                                       patient_name="Tanaka^Jun", instance_number=number,
                                       modality="CR"))
        files.append(path)
    chest = PYDICOM_DATA / "RG1_J2KR.dcm"
    stored = _run("storescu", listener, "-xv", files=(chest, *files))
    assert stored.returncode == 0, stored.stderr
    with db.session() as session:
        rows = session.scalars(select(DicomInstance)).all()
        assert {r.source for r in rows} == {"dimse:MODALITY1"}
        assert {r.org_id for r in rows} == {accounts.org("org-a")}
        j2k = next(r for r in rows if r.transfer_syntax_uid == "1.2.840.10008.1.2.4.90")
    with blobs.open(j2k.blob_sha256) as fh:
        assert fh.read()[132:].endswith(chest.read_bytes()[-4_000_000:])  # dataset unchanged
    with blobs.open(j2k.blob_sha256) as fh:
        stored_ds = pydicom.dcmread(fh)
    assert stored_ds.PixelData == pydicom.dcmread(chest).PixelData

    found = tmp_path / "found"
    found.mkdir()
    query = _run("findscu", listener, "-S", "-k", "QueryRetrieveLevel=STUDY",
                 "-k", "PatientID=PID-77", "-k", "StudyInstanceUID", "-k", "PatientName",
                 "-k", "NumberOfStudyRelatedInstances", "-k", "ModalitiesInStudy",
                 "-X", "-od", str(found))
    assert query.returncode == 0, query.stderr
    answers = [pydicom.dcmread(p) for p in sorted(found.iterdir())]
    assert len(answers) == 1
    assert answers[0].StudyInstanceUID == study
    assert str(answers[0].PatientName) == "Tanaka^Jun"
    assert int(answers[0].NumberOfStudyRelatedInstances) == 2
    assert answers[0].ModalitiesInStudy == "CR"
    patient_root = tmp_path / "patients"
    patient_root.mkdir()
    patients = _run("findscu", listener, "-P", "-k", "QueryRetrieveLevel=PATIENT",
                    "-k", "PatientName=TANAKA*", "-k", "PatientID", "-X", "-od",
                    str(patient_root))
    assert patients.returncode == 0
    (patient,) = [pydicom.dcmread(p) for p in patient_root.iterdir()]
    assert patient.PatientID == "PID-77"

    fetched = tmp_path / "fetched"
    fetched.mkdir()
    got = _run("getscu", listener, "-S", "-k", "QueryRetrieveLevel=STUDY",
               "-k", f"StudyInstanceUID={study}", "-od", str(fetched))
    assert got.returncode == 0, got.stderr
    received = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p)
                for p in fetched.iterdir()}
    originals = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in files}
    assert set(received) == set(originals)
    for uid, original in originals.items():
        assert received[uid] == original  # every element, pixel data included


def test_peer_sees_only_its_organisation(listener: DimseServer, tmp_path: Path) -> None:
    path = tmp_path / "a.dcm"
    path.write_bytes(make_instance(patient_id="ONLY-A"))
    assert _run("storescu", listener, files=(path,)).returncode == 0
    found = tmp_path / "found"
    found.mkdir()
    query = _run("findscu", listener, "-S", "-k", "QueryRetrieveLevel=STUDY",
                 "-k", "PatientID=ONLY-A", "-X", "-od", str(found), aet="OTHERPACS")
    assert query.returncode == 0
    assert list(found.iterdir()) == []


def test_bad_instance_gets_a_failure_status(listener: DimseServer, db: Database,
                                            tmp_path: Path) -> None:
    ds = pydicom.dcmread(io.BytesIO(make_instance()))
    del ds.SeriesInstanceUID
    path = tmp_path / "bad.dcm"
    ds.save_as(path)
    result = _run("storescu", listener, "-v", files=(path,))
    assert "Error: DataSetDoesNotMatchSOPClass" in result.stdout + result.stderr
    with db.session() as session:
        assert session.scalars(select(DicomStudy)).all() == []


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_move_to_a_listed_destination(listener: DimseServer, db: Database, accounts: Accounts,
                                      tmp_path: Path) -> None:
    import time

    port = _free_port()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    with db.session() as session:
        add_remote_ae(session, accounts.org("org-a"), "WORKSTATION", host="127.0.0.1",
                      port=port)
    destination = subprocess.Popen(["storescp", "-aet", "WORKSTATION", "-od", str(inbox),
                                    str(port)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        study = generate_uid()
        files = tuple(tmp_path / f"m{i}.dcm" for i in range(3))
        for i, path in enumerate(files):
            path.write_bytes(make_instance(study_uid=study, instance_number=i + 1))
        assert _run("storescu", listener, files=files).returncode == 0
        moved = _run("movescu", listener, "-S", "-aem", "WORKSTATION",
                     "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}")
        assert moved.returncode == 0, moved.stderr
        unknown = _run("movescu", listener, "-S", "-aem", "NOWHERE", "-v",
                       "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}")
        assert "MoveDestinationUnknown" in unknown.stdout + unknown.stderr
    finally:
        destination.terminate()
        destination.wait(10)
    received = sorted(pydicom.dcmread(p).InstanceNumber for p in inbox.iterdir())
    assert received == [1, 2, 3]


def _dataset_bytes(raw: bytes) -> bytes:
    """A Part-10 file's bytes after its File Meta Information (group 0002)."""
    assert raw[128:132] == b"DICM"
    pos = 132
    while int.from_bytes(raw[pos:pos + 2], "little") == 0x0002:
        vr = raw[pos + 4:pos + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            pos += 12 + int.from_bytes(raw[pos + 8:pos + 12], "little")
        else:
            pos += 8 + int.from_bytes(raw[pos + 6:pos + 8], "little")
    return raw[pos:]


def _same(got: bytes, expected: bytes, what: str) -> None:
    if got != expected:
        at = next((i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
                  min(len(got), len(expected)))
        pytest.fail(f"{what}: {len(got)} bytes received, {len(expected)} stored, first "
                    f"difference at {at}: {got[at - 16:at + 16]!r} vs "
                    f"{expected[at - 16:at + 16]!r}")


def _real_instances() -> list[tuple[Path, str]]:
    """The real files, each with the getscu/storescp option that prefers its syntax."""
    from careplane.imaging.sample_data import mammogram_files

    return [(PYDICOM_DATA / "RG1_UNCR.dcm", "+xe"), (PYDICOM_DATA / "RG1_J2KR.dcm", "+xv"),
            (mammogram_files()[0], "+xr")]


def test_get_and_move_send_the_stored_bytes(listener: DimseServer, db: Database,
                                            blobs: LocalBlobStore, accounts: Accounts,
                                            tmp_path: Path) -> None:
    """C-GET and C-MOVE deliver each instance byte for byte as stored, in its own syntax
    (uncompressed, JPEG 2000, RLE), to dcmtk tools that write what they receive unchanged."""
    import time

    instances = _real_instances()
    for path, prefer in instances:  # proposing the file's own syntax
        stored = _run("storescu", listener, prefer.replace("+", "-"), files=(path,))
        assert stored.returncode == 0, stored.stderr
    port = _free_port()
    with db.session() as session:
        add_remote_ae(session, accounts.org("org-a"), "ARCHIVE", host="127.0.0.1", port=port)
    for number, (path, prefer) in enumerate(instances):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        keys = ("-k", "QueryRetrieveLevel=IMAGE",
                "-k", f"StudyInstanceUID={ds.StudyInstanceUID}",
                "-k", f"SeriesInstanceUID={ds.SeriesInstanceUID}",
                "-k", f"SOPInstanceUID={ds.SOPInstanceUID}")
        with db.session() as session:
            sha = session.scalars(select(DicomInstance.blob_sha256).where(
                DicomInstance.sop_instance_uid == ds.SOPInstanceUID)).one()
        with blobs.open(sha) as fh:
            expected = _dataset_bytes(fh.read())  # the file as careplane received it
        fetched = tmp_path / f"get{number}"
        fetched.mkdir()
        got = _run("getscu", listener, "-S", prefer, "+B", *keys, "-od", str(fetched))
        assert got.returncode == 0, got.stderr
        (received,) = fetched.iterdir()
        _same(_dataset_bytes(received.read_bytes()), expected, "C-GET " + path.name)
        inbox = tmp_path / f"move{number}"
        inbox.mkdir()
        archive = subprocess.Popen(["storescp", "-aet", "ARCHIVE", prefer, "+B", "-od",
                                    str(inbox), str(port)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.3)
            moved = _run("movescu", listener, "-S", "-aem", "ARCHIVE", *keys)
            assert moved.returncode == 0, moved.stderr
        finally:
            archive.terminate()
            archive.wait(10)
        (received,) = inbox.iterdir()
        _same(_dataset_bytes(received.read_bytes()), expected, "C-MOVE " + path.name)
