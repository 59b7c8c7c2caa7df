"""Resumable uploads: send a file in pieces, resume from the offset the server reports."""

from __future__ import annotations

import hashlib

from fastapi.testclient import TestClient

from careplane.genomics.simulate import SimulatedDataset
from careplane.security import Role
from tests.conftest import Accounts


def test_upload_in_pieces_and_resume(client: TestClient, accounts: Accounts,
                                     dataset: SimulatedDataset) -> None:
    h = accounts.make("gina", Role.clinician).headers
    data = dataset.r1.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    created = client.post("/api/genomics/uploads", json={
        "filename": "reads_R1.fastq.gz", "size": len(data), "sha256": digest}, headers=h)
    assert created.status_code == 201, created.text
    url = created.headers["Location"]
    third = len(data) // 3
    first = client.patch(url, content=data[:third], headers={**h, "Upload-Offset": "0"})
    assert first.status_code == 200 and first.json() == {
        "id": created.json()["id"], "filename": "reads_R1.fastq.gz", "size": len(data),
        "offset": third, "complete": False, "file_id": None}
    # The client lost its connection; it asks where to resume.
    status = client.head(url, headers=h)
    assert status.headers["Upload-Offset"] == str(third)
    wrong = client.patch(url, content=data[:10], headers={**h, "Upload-Offset": "0"})
    assert wrong.status_code == 409 and wrong.headers["Upload-Offset"] == str(third)
    second = client.patch(url, content=data[third:2 * third],
                          headers={**h, "Upload-Offset": str(third)})
    assert second.json()["offset"] == 2 * third
    last = client.patch(url, content=data[2 * third:],
                        headers={**h, "Upload-Offset": str(2 * third)})
    assert last.status_code == 200
    done = last.json()
    assert done["complete"] and done["file"]["sha256"] == digest
    assert done["file"]["kind"] == "fastq" and done["file"]["compressed"]
    content = client.get(f"/api/genomics/files/{done['file_id']}/content", headers=h)
    assert content.content == data
    again = client.patch(url, content=b"x", headers={**h, "Upload-Offset": str(len(data))})
    assert again.status_code == 422


def test_upload_limits_and_checksum(client: TestClient, accounts: Accounts) -> None:
    h = accounts.make("gina", Role.clinician).headers
    body = b"@r\nACGT\n+\nIIII\n"
    url = client.post("/api/genomics/uploads", json={"filename": "x.fq", "size": len(body),
                                                     "sha256": "0" * 64},
                      headers=h).headers["Location"]
    too_much = client.patch(url, content=body + b"extra", headers={**h, "Upload-Offset": "0"})
    assert too_much.status_code == 422 and "declared size" in too_much.json()["error"]["message"]
    bad_sum = client.patch(url, content=body, headers={**h, "Upload-Offset": "0"})
    assert bad_sum.status_code == 422 and "checksum" in bad_sum.json()["error"]["message"]
    # Nothing was registered, and the upload can still be completed from where it stood.
    assert client.head(url, headers=h).headers["Upload-Offset"] == "0"
    assert client.post("/api/genomics/uploads", json={"filename": "e.fq", "size": 0},
                       headers=h).status_code == 422
    other = accounts.make("oscar", Role.clinician, org="org-b").headers
    assert client.head(url, headers=other).status_code == 404
    assert client.patch(url, content=body, headers={**other, "Upload-Offset": "0"}
                        ).status_code == 404
