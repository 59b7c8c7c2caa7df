"""Interoperability: the dicomweb-client library (as used by real tools) against /dicomweb."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import generate_uid

from careplane.platform.db import Database
from careplane.security import Role
from tests.conftest import Accounts
from tests.imaging.conftest import PYDICOM_DATA, make_instance
from tests.support.servers import free_port, running_server

pytestmark = pytest.mark.slow


@pytest.fixture
def web(db_url: str, tmp_path: Path, db: Database) -> Iterator[DICOMwebClient]:
    account = Accounts(db).make("pacs", Role.radiologist)
    with running_server(db_url, tmp_path / "data",
                        extra_env={"CAREPLANE_DICOM_PORT": str(free_port())}) as base:
        yield DICOMwebClient(url=f"{base}/dicomweb", headers=account.headers)


def test_store_search_retrieve(web: DICOMwebClient) -> None:
    study = generate_uid()
    made = [pydicom.dcmread(io.BytesIO(make_instance(study_uid=study, patient_id="DWC-1",
                                                     instance_number=n, frames=2)))
            for n in (1, 2)]
    chest = pydicom.dcmread(PYDICOM_DATA / "RG1_J2KR.dcm")
    result = web.store_instances([*made, chest])
    assert len(result.ReferencedSOPSequence) == 3 and "FailedSOPSequence" not in result

    studies = web.search_for_studies(search_filters={"PatientID": "DWC-1"})
    assert [s["0020000D"]["Value"][0] for s in studies] == [study]
    assert len(web.search_for_studies(limit=1)) == 1
    series = web.search_for_series(study)
    assert len(series) == 2
    instances = web.search_for_instances(study_instance_uid=study)
    assert {i["00080018"]["Value"][0] for i in instances} == {d.SOPInstanceUID for d in made}

    retrieved = {ds.SOPInstanceUID: ds for ds in web.retrieve_study(study)}
    for original in made:
        assert retrieved[original.SOPInstanceUID] == original
    one = made[0]
    metadata = web.retrieve_instance_metadata(study, one.SeriesInstanceUID, one.SOPInstanceUID)
    assert metadata["00100020"]["Value"] == ["DWC-1"]
    frames = web.retrieve_instance_frames(study, one.SeriesInstanceUID, one.SOPInstanceUID,
                                          frame_numbers=[2])
    expected = one.pixel_array[1]
    assert np.frombuffer(frames[0], dtype=np.uint16).reshape(expected.shape).tolist() == \
        expected.tolist()
    rendered = web.retrieve_instance_rendered(study, one.SeriesInstanceUID, one.SOPInstanceUID,
                                              media_types=("image/png",))
    assert rendered[:8] == b"\x89PNG\r\n\x1a\n"

    chest_uid = chest.StudyInstanceUID
    (as_stored,) = web.retrieve_study(chest_uid, media_types=(("application/dicom", "*"),))
    assert as_stored.file_meta.TransferSyntaxUID == chest.file_meta.TransferSyntaxUID
    assert as_stored.PixelData == chest.PixelData
    (uncompressed,) = web.retrieve_study(chest_uid)  # the client's default: explicit VR LE
    assert uncompressed.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert np.array_equal(uncompressed.pixel_array, chest.pixel_array)
    bulk_uri = web.retrieve_instance_metadata(chest_uid, chest.SeriesInstanceUID,
                                              chest.SOPInstanceUID)["7FE00010"]["BulkDataURI"]
    assert web.retrieve_bulkdata(bulk_uri)[0] == chest.PixelData
