"""DICOMweb over HTTP: STOW-RS status per instance, QIDO-RS matching, WADO-RS retrieval."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.uid import generate_uid

from careplane.security import Role
from tests.conftest import Account, Accounts
from tests.imaging.conftest import data_file, make_instance, multipart, split_multipart

CHEST_STUDY = "1.3.6.1.4.1.5962.1.2.9.20040826185059.5457"


def _stow(client: TestClient, who: Account, parts: list[bytes], path: str = "/dicomweb/studies"
          ) -> Any:
    body, headers = multipart(parts)
    return client.post(path, content=body, headers={**headers, **who.headers})


def _values(item: dict[str, Any], tag: str) -> list[Any]:
    return list(item.get(tag, {}).get("Value", []))


@pytest.fixture
def radiologist(accounts: Accounts) -> Account:
    return accounts.make("jun", Role.radiologist)


def test_stow_reports_each_instance_and_keeps_the_good_ones(
        client: TestClient, radiologist: Account) -> None:
    good = [make_instance(), data_file("RG1_J2KR.dcm")]
    bad = [b"this is not DICOM" * 10, data_file("RG1_UNCR.dcm")[:100000]]
    response = _stow(client, radiologist, [good[0], bad[0], good[1], bad[1]])
    assert response.status_code == 202, response.text
    assert response.headers["content-type"] == "application/dicom+json"
    body = response.json()
    stored = body["00081199"]["Value"]
    failed = body["00081198"]["Value"]
    assert len(stored) == 2 and len(failed) == 2
    assert _values(stored[1], "00081155") == [
        "1.3.6.1.4.1.5962.1.1.9.1.2.20040826185059.5457"]
    url = _values(stored[1], "00081190")[0]
    assert url.startswith(f"http://testserver/dicomweb/studies/{CHEST_STUDY}/series/")
    assert url.endswith("/instances/1.3.6.1.4.1.5962.1.1.9.1.2.20040826185059.5457")
    assert {_values(f, "00081197")[0] for f in failed} == {0xC000}
    assert "truncated" in _values(failed[1], "00000902")[0]
    assert _values(failed[1], "00081155") == ["1.3.6.1.4.1.5962.1.1.9.1.1.20040826185059.5457"]
    found = client.get("/dicomweb/instances", headers=radiologist.headers).json()
    assert len(found) == 2


def test_stow_status_codes(client: TestClient, radiologist: Account) -> None:
    assert _stow(client, radiologist, [make_instance()]).status_code == 200
    conflict = _stow(client, radiologist, [b"nope" * 50])
    assert conflict.status_code == 409
    assert "00081199" not in conflict.json()
    other = _stow(client, radiologist, [make_instance()], f"/dicomweb/studies/{generate_uid()}")
    assert other.status_code == 409
    assert _values(other.json()["00081198"]["Value"][0], "00081197") == [0xA900]


def test_stow_bad_requests_are_4xx(client: TestClient, radiologist: Account,
                                   accounts: Accounts) -> None:
    raw = make_instance()
    assert client.post("/dicomweb/studies", content=raw,
                       headers={"Content-Type": "application/dicom"}).status_code == 401
    researcher = accounts.make("sora", Role.researcher)
    assert _stow(client, researcher, [raw]).status_code == 403
    wrong = client.post("/dicomweb/studies", content=raw,
                        headers={"Content-Type": "text/plain", **radiologist.headers})
    assert wrong.status_code == 415
    broken = client.post("/dicomweb/studies", content=b"--b\r\n\r\nabc",
                         headers={"Content-Type": "multipart/related; boundary=b",
                                  **radiologist.headers})
    assert broken.status_code == 400 and "malformed" in broken.json()["error"]["message"]
    empty = client.post("/dicomweb/studies", content=b"--b--\r\n",
                        headers={"Content-Type": "multipart/related; boundary=b",
                                 **radiologist.headers})
    assert empty.status_code == 400
    single = client.post("/dicomweb/studies", content=raw,
                         headers={"Content-Type": "application/dicom", **radiologist.headers})
    assert single.status_code == 200


@pytest.fixture
def catalogue(client: TestClient, radiologist: Account) -> dict[str, str]:
    """Four studies of three patients, in two modalities."""
    studies = {"ana": generate_uid(), "ana2": generate_uid(), "bo": generate_uid(),
               "zoe": generate_uid()}
    ana_series = generate_uid()
    parts = [
        make_instance(patient_id="P-ANA", patient_name="Ruíz^Ana", study_uid=studies["ana"],
                      series_uid=ana_series, modality="CT", study_date="20240110",
                      accession="ACC1", instance_number=2),
        make_instance(patient_id="P-ANA", patient_name="Ruíz^Ana", study_uid=studies["ana"],
                      series_uid=ana_series, modality="CT", study_date="20240110",
                      accession="ACC1", instance_number=1),
        make_instance(patient_id="P-ANA", patient_name="Ruíz^Ana", study_uid=studies["ana2"],
                      modality="MR", study_date="20240301", accession="ACC2"),
        make_instance(patient_id="P-BO", patient_name="Bower^Bo", study_uid=studies["bo"],
                      modality="CR", study_date="20231231", accession="ACC3"),
        make_instance(patient_id="P-ZOE", patient_name="Zoe^Ann", study_uid=studies["zoe"],
                      modality="MR", study_date="20240615", accession="ACC4",
                      StudyDescription="Knee MRI"),
    ]
    assert _stow(client, radiologist, parts).status_code == 200
    return studies


def _search(client: TestClient, who: Account, path: str, **params: Any) -> list[dict[str, Any]]:
    response = client.get(path, params=params, headers=who.headers)
    assert response.status_code == 200, response.text
    result: list[dict[str, Any]] = response.json()
    return result


def _uids(results: list[dict[str, Any]], tag: str = "0020000D") -> set[str]:
    return {_values(r, tag)[0] for r in results}


def test_qido_study_matching(client: TestClient, radiologist: Account,
                             catalogue: dict[str, str], monkeypatch: pytest.MonkeyPatch
                             ) -> None:
    s = catalogue
    q = lambda **p: _uids(_search(client, radiologist, "/dicomweb/studies", **p))  # noqa: E731
    assert q() == set(s.values())
    assert q(PatientID="P-ANA") == {s["ana"], s["ana2"]}
    assert q(PatientName="ruiz^ana") == {s["ana"], s["ana2"]}  # case and accents folded
    assert q(PatientName="B*") == {s["bo"]}
    assert q(PatientName="an", fuzzymatching="true") == {s["ana"], s["ana2"], s["zoe"]}
    assert q(StudyDate="20240101-20240331") == {s["ana"], s["ana2"]}
    assert q(StudyDate="-20231231") == {s["bo"]}
    assert q(StudyDate="20240601-") == {s["zoe"]}
    assert q(ModalitiesInStudy="MR") == {s["ana2"], s["zoe"]}
    assert q(StudyInstanceUID=f"{s['bo']},{s['zoe']}") == {s["bo"], s["zoe"]}
    assert q(AccessionNumber="ACC?") == set(s.values())
    assert q(**{"00080050": "ACC3"}) == {s["bo"]}
    monkeypatch.setattr("careplane.imaging.dicomweb._STREAM_BATCH", 2)  # several batches
    assert len(_search(client, radiologist, "/dicomweb/studies")) == len(s)
    first = _search(client, radiologist, "/dicomweb/studies", limit=2)
    rest = _search(client, radiologist, "/dicomweb/studies", limit=2, offset=2)
    assert len(first) == 2 and len(rest) == 2 and not _uids(first) & _uids(rest)
    ana = _search(client, radiologist, "/dicomweb/studies", StudyInstanceUID=s["ana"])[0]
    assert _values(ana, "00201208") == [2] and _values(ana, "00201206") == [1]
    assert _values(ana, "00080061") == ["CT"]
    assert _values(ana, "00100010") == [{"Alphabetic": "Ruíz^Ana"}]
    assert _values(ana, "00081190")[0].endswith(f"/dicomweb/studies/{s['ana']}")


def test_qido_includefield_and_bad_queries(client: TestClient, radiologist: Account,
                                           catalogue: dict[str, str]) -> None:
    zoe = _search(client, radiologist, "/dicomweb/studies", PatientID="P-ZOE",
                  includefield="PhotometricInterpretation,00280010")[0]
    assert _values(zoe, "00280004") == ["MONOCHROME2"]
    assert _values(zoe, "00280010") == [16]
    assert _values(zoe, "00081030") == ["Knee MRI"]
    for params in ({"StudyDate": "last week"}, {"limit": "-1"}, {"NotAnAttribute": "x"},
                   {"includefield": "Nonsense"}, {"fuzzymatching": "maybe"}):
        response = client.get("/dicomweb/studies", params=params, headers=radiologist.headers)
        assert response.status_code == 400, params
        assert response.json()["error"]["message"]
    warned = client.get("/dicomweb/studies", params={"SOPClassUID": "1.2"},
                        headers=radiologist.headers)
    assert warned.status_code == 200 and "SOPClassUID" in warned.headers["warning"]


def test_qido_series_and_instances(client: TestClient, radiologist: Account,
                                   catalogue: dict[str, str]) -> None:
    s = catalogue
    series = _search(client, radiologist, f"/dicomweb/studies/{s['ana']}/series")
    assert len(series) == 1 and _values(series[0], "00080060") == ["CT"]
    assert _values(series[0], "00201209") == [2]
    assert "00100010" not in series[0]  # scoped to a study: no study attributes
    all_mr = _search(client, radiologist, "/dicomweb/series", Modality="MR")
    assert _uids(all_mr) == {s["ana2"], s["zoe"]}
    assert "00100010" in all_mr[0]
    series_uid = _values(series[0], "0020000E")[0]
    instances = _search(client, radiologist,
                        f"/dicomweb/studies/{s['ana']}/series/{series_uid}/instances")
    assert [_values(i, "00200013") for i in instances] == [[1], [2]]
    assert _search(client, radiologist, "/dicomweb/instances", InstanceNumber="2",
                   PatientID="P-ANA")[0]["00200013"]["Value"] == [2]
    everything = _search(client, radiologist, f"/dicomweb/studies/{s['zoe']}/instances",
                         includefield="all")
    assert _values(everything[0], "00081030") == ["Knee MRI"]
    assert "7FE00010" not in everything[0]


def test_other_organisation_sees_nothing(client: TestClient, accounts: Accounts,
                                         radiologist: Account, catalogue: dict[str, str]
                                         ) -> None:
    other = accounts.make("elsewhere", Role.radiologist, org="org-b")
    assert _search(client, other, "/dicomweb/studies") == []
    study = catalogue["zoe"]
    assert client.get(f"/dicomweb/studies/{study}/metadata",
                      headers=other.headers).status_code == 403
    assert client.get(f"/dicomweb/studies/{generate_uid()}/metadata",
                      headers=radiologist.headers).status_code == 404


@pytest.fixture
def chest(client: TestClient, radiologist: Account) -> dict[str, str]:
    response = _stow(client, radiologist, [data_file("RG1_J2KR.dcm")])
    assert response.status_code == 200
    url = _values(response.json()["00081199"]["Value"][0], "00081190")[0]
    path = url[url.index("/dicomweb/"):]
    parts = path.split("/")
    return {"path": path, "study": parts[3], "series": parts[5], "instance": parts[7]}


def test_wado_retrieves_the_stored_file_unchanged(client: TestClient, radiologist: Account,
                                                  chest: dict[str, str]) -> None:
    raw = data_file("RG1_J2KR.dcm")
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    for path in (f"/dicomweb/studies/{chest['study']}",
                 f"/dicomweb/studies/{chest['study']}/series/{chest['series']}", chest["path"]):
        response = client.get(path, headers={"Accept": accept, **radiologist.headers})
        assert response.status_code == 200
        parts = split_multipart(response.content, response.headers["content-type"])
        assert len(parts) == 1 and parts[0][1] == raw
        assert "transfer-syntax=1.2.840.10008.1.2.4.90" in parts[0][0]["content-type"]


def test_wado_default_transfer_syntax_is_explicit_little_endian(
        client: TestClient, radiologist: Account, chest: dict[str, str]) -> None:
    response = client.get(chest["path"], headers=radiologist.headers)
    assert response.status_code == 200
    (_, body), = split_multipart(response.content, response.headers["content-type"])
    ds = pydicom.dcmread(io.BytesIO(body))
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    original = pydicom.dcmread(io.BytesIO(data_file("RG1_UNCR.dcm")))
    assert np.array_equal(ds.pixel_array, original.pixel_array)  # lossless round trip
    refused = client.get(chest["path"], headers={
        "Accept": 'multipart/related; type="application/dicom"; '
                  "transfer-syntax=1.2.840.10008.1.2.4.50",
        **radiologist.headers})
    assert refused.status_code == 406


def test_wado_metadata_bulkdata_and_frames(client: TestClient, radiologist: Account,
                                           chest: dict[str, str]) -> None:
    meta = client.get(chest["path"] + "/metadata", headers=radiologist.headers)
    assert meta.status_code == 200
    (item,) = meta.json()
    assert _values(item, "00100020") == ["9RG1"]
    bulk_uri = item["7FE00010"]["BulkDataURI"]
    assert bulk_uri.startswith("http://testserver/dicomweb/studies/")
    bulk = client.get(bulk_uri[len("http://testserver"):], headers={
        "Accept": "application/octet-stream", **radiologist.headers})
    assert bulk.status_code == 200 and len(bulk.content) > 100000
    original = pydicom.dcmread(io.BytesIO(data_file("RG1_UNCR.dcm")))
    frames = client.get(chest["path"] + "/frames/1", headers=radiologist.headers)
    assert frames.status_code == 200
    (headers, pixels), = split_multipart(frames.content, frames.headers["content-type"])
    assert headers["content-type"].startswith("application/octet-stream")
    assert pixels == original.PixelData
    stored = client.get(chest["path"] + "/frames/1", headers={
        "Accept": 'multipart/related; type="image/jp2"', **radiologist.headers})
    (headers, j2k), = split_multipart(stored.content, stored.headers["content-type"])
    assert headers["content-type"].startswith("image/jp2")
    assert j2k[:4] == b"\xff\x4f\xff\x51"  # a JPEG 2000 codestream
    assert client.get(chest["path"] + "/frames/2",
                      headers=radiologist.headers).status_code == 404
    assert client.get(chest["path"] + "/frames/x",
                      headers=radiologist.headers).status_code == 400


def test_rendered_and_thumbnails(client: TestClient, radiologist: Account,
                                 chest: dict[str, str]) -> None:
    jpeg = client.get(chest["path"] + "/rendered", params={"viewport": "400,400"},
                      headers=radiologist.headers)
    assert jpeg.status_code == 200 and jpeg.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(jpeg.content))
    assert max(image.size) <= 400 and image.mode == "L"
    narrow = client.get(chest["path"] + "/rendered", params={
        "window": "1000,10", "accept": "image/png", "viewport": "400,400"},
        headers=radiologist.headers)
    assert narrow.headers["content-type"] == "image/png"
    pixels = np.asarray(Image.open(io.BytesIO(narrow.content)))
    assert set(np.unique(pixels)) <= set(range(256))
    assert (pixels == 0).mean() + (pixels == 255).mean() > 0.9  # a 10-wide window saturates
    for path in (f"/dicomweb/studies/{chest['study']}/thumbnail",
                 f"/dicomweb/studies/{chest['study']}/series/{chest['series']}/thumbnail",
                 chest["path"] + "/thumbnail"):
        thumb = client.get(path, headers=radiologist.headers)
        assert thumb.status_code == 200
        assert max(Image.open(io.BytesIO(thumb.content)).size) <= 128
    assert client.get(chest["path"] + "/frames/1/rendered", params={"window": "a,b"},
                      headers=radiologist.headers).status_code == 400
    assert client.get(chest["path"] + "/frames/9/rendered",
                      headers=radiologist.headers).status_code == 404


def test_cors_for_configured_viewer_origins(client: TestClient, radiologist: Account,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from careplane.imaging.config import imaging_settings

    monkeypatch.setenv("CAREPLANE_DICOM_CORS_ORIGINS", '["https://viewer.example"]')
    imaging_settings.cache_clear()
    try:
        preflight = client.options("/dicomweb/studies", headers={
            "Origin": "https://viewer.example", "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization"})
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "https://viewer.example"
        assert "Authorization" in preflight.headers["access-control-allow-headers"]
        allowed = client.get("/dicomweb/studies", headers={
            "Origin": "https://viewer.example", **radiologist.headers})
        assert allowed.headers["access-control-allow-origin"] == "https://viewer.example"
        other = client.get("/dicomweb/studies", headers={
            "Origin": "https://elsewhere.example", **radiologist.headers})
        assert "access-control-allow-origin" not in other.headers
    finally:
        imaging_settings.cache_clear()


def test_a_body_cut_short_leaves_no_file_behind(client: TestClient, radiologist: Account,
                                                settings: Any) -> None:
    raw = make_instance()
    body, headers = multipart([raw])
    cut = client.post("/dicomweb/studies", content=body[: len(body) // 2],
                      headers={**headers, **radiologist.headers})
    assert cut.status_code == 400
    blob_dir = settings.blob_dir
    leftovers = [p for p in blob_dir.rglob("*") if p.is_file()] if blob_dir.exists() else []
    assert leftovers == []


def _blob_files(settings: Any) -> set[str]:
    root = settings.blob_dir
    return {p.name for p in root.rglob("*") if p.is_file() and ".part" not in p.name} \
        if root.exists() else set()


def test_refused_parts_leave_no_file_behind(client: TestClient, radiologist: Account,
                                            settings: Any, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    """Each part is written to the blob store while it arrives; the refused ones are removed."""
    from careplane.imaging.config import imaging_settings

    study = generate_uid()
    kept = make_instance(study_uid=study)
    first = _stow(client, radiologist, [kept])
    assert first.status_code == 200
    files = _blob_files(settings)
    assert len(files) == 1
    monkeypatch.setenv("CAREPLANE_DICOM_DUPLICATE_POLICY", "reject")
    imaging_settings.cache_clear()
    try:
        again = pydicom.dcmread(io.BytesIO(kept))
        again.PatientComments = "a different copy of the same instance"
        changed = io.BytesIO()
        again.save_as(changed, enforce_file_format=True)
        response = _stow(client, radiologist, [
            b"this is not DICOM" * 10,                      # not DICOM: refused on reading
            data_file("RG1_UNCR.dcm")[:100000],             # truncated
            make_instance(study_uid=generate_uid()),        # another study than addressed
            changed.getvalue(),                             # a duplicate, refused by policy
            kept,                                           # the very same bytes, refused
            make_instance(study_uid=study),                 # stored
        ], path=f"/dicomweb/studies/{study}")
    finally:
        imaging_settings.cache_clear()
    assert response.status_code == 202, response.text
    assert len(response.json()["00081198"]["Value"]) == 5
    after = _blob_files(settings)
    assert files < after and len(after) == 2  # the old file stays, one new file is added
    stored = client.get(f"/dicomweb/studies/{study}/instances",
                        headers=radiologist.headers).json()
    assert len(stored) == 2


def test_rendered_study_and_series(client: TestClient, radiologist: Account) -> None:
    """A rendered study or series is multipart/related, one rendered frame per part, in order;
    each part is the same image its frame's own rendered URL gives."""
    study, series = generate_uid(), generate_uid()
    chest = pydicom.dcmread(io.BytesIO(data_file("RG1_UNCR.dcm")))
    chest.StudyInstanceUID, chest.SeriesInstanceUID = study, generate_uid()
    chest.SOPInstanceUID = generate_uid()
    chest.file_meta.MediaStorageSOPInstanceUID = chest.SOPInstanceUID
    out = io.BytesIO()
    chest.save_as(out, enforce_file_format=True)
    stored = _stow(client, radiologist, [
        out.getvalue(),
        make_instance(study_uid=study, series_uid=series, frames=3, rows=32, columns=32,
                      instance_number=1),
        make_instance(study_uid=study, series_uid=series, rows=32, columns=32,
                      instance_number=2)])
    assert stored.status_code == 200, stored.text
    base = f"/dicomweb/studies/{study}"

    whole = client.get(base + "/rendered", params={"viewport": "256,256"},
                       headers={**radiologist.headers,
                                "Accept": 'multipart/related; type="image/jpeg"'})
    assert whole.status_code == 200
    assert whole.headers["content-type"].startswith('multipart/related; type="image/jpeg"')
    parts = split_multipart(whole.content, whole.headers["content-type"])
    assert len(parts) == 5  # the chest CR, then 3 frames and 1 frame of the second series
    for headers, body in parts:
        assert headers["content-type"] == "image/jpeg"
        assert max(Image.open(io.BytesIO(body)).size) <= 256
    locations = [h["content-location"] for h, _ in parts]
    assert locations[0].endswith(f"/instances/{chest.SOPInstanceUID}/frames/1/rendered")
    assert [loc.rsplit("/", 2)[-2] for loc in locations[1:]] == ["1", "2", "3", "1"]

    one = client.get(f"{base}/series/{series}/rendered", params={"accept": "image/png"},
                     headers=radiologist.headers)
    assert one.status_code == 200
    series_parts = split_multipart(one.content, one.headers["content-type"])
    assert len(series_parts) == 4
    frame2 = series_parts[1][0]["content-location"]
    direct = client.get(frame2[frame2.index("/dicomweb/"):], params={"accept": "image/png"},
                        headers=radiologist.headers)
    assert direct.content == series_parts[1][1]

    refused = client.get(base + "/rendered", headers={**radiologist.headers,
                                                      "Accept": "application/dicom"})
    assert refused.status_code == 406
    assert client.get(f"/dicomweb/studies/{generate_uid()}/rendered",
                      headers=radiologist.headers).status_code == 404
