"""``/api/genomics``: upload, register, run through a worker, read the published outputs."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from careplane.genomics.simulate import SimulatedDataset
from careplane.platform import jobs
from careplane.platform.db import Database
from careplane.security import Role
from careplane.settings import Settings
from tests.conftest import Accounts


@pytest.fixture
def worker_env(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    """A job worker finds its database from CAREPLANE_* like any process; the data directory
    travels with the job (a server started with --data-dir has no CAREPLANE_DATA_DIR)."""
    monkeypatch.setenv("CAREPLANE_DATABASE_URL", settings.db_url)
    monkeypatch.delenv("CAREPLANE_DATA_DIR", raising=False)
    monkeypatch.setenv("CAREPLANE_ENV", "test")


def _upload(client: TestClient, headers: dict[str, str], path: Path, **params: str) -> Any:
    data = path.read_bytes()
    response = client.post("/api/genomics/files", params={"filename": path.name, **params},
                           content=data, headers={**headers, "X-Checksum-Sha256":
                                                  hashlib.sha256(data).hexdigest()})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["sha256"] == hashlib.sha256(data).hexdigest() and body["size"] == len(data)
    return body


def _register(client: TestClient, headers: dict[str, str], ds: SimulatedDataset
              ) -> dict[str, Any]:
    sample = client.post("/api/genomics/samples", json={"name": "NA-1", "patient_id": "pat-1"},
                         headers=headers)
    assert sample.status_code == 201, sample.text
    sid = sample.json()["id"]
    ref_file = _upload(client, headers, ds.reference)
    assert ref_file["kind"] == "fasta"
    reference = client.post("/api/genomics/references",
                            json={"name": "sim", "file_id": ref_file["id"]}, headers=headers)
    assert reference.status_code == 201, reference.text
    assert reference.json()["contigs"] == [[k, v] for k, v in ds.contigs.items()]
    r1 = _upload(client, headers, ds.r1, sample_id=sid)
    r2 = _upload(client, headers, ds.r2, sample_id=sid)
    assert r1["kind"] == "fastq" and r1["compressed"]
    return {"sample_id": sid, "reference_id": reference.json()["id"],
            "fastq": [r1["id"], r2["id"]]}


def test_run_from_upload_to_published_outputs(
        client: TestClient, accounts: Accounts, db: Database, dataset: SimulatedDataset,
        worker_env: None) -> None:
    nurse = accounts.make("gina", Role.clinician)
    ids = _register(client, nurse.headers, dataset)
    submitted = client.post("/api/genomics/runs", json={**ids, "threads": 2},
                            headers=nurse.headers)
    assert submitted.status_code == 202, submitted.text
    run = submitted.json()
    assert run["status"] == "queued" and run["sample"] == "NA-1"
    home = client.get("/genomics", headers=nurse.headers)
    assert home.status_code == 200
    assert f"/genomics/runs/{run['id']}" in home.text and "queued" in home.text
    assert 'data-live-topic="job."' in home.text  # re-rendered on each job event

    assert jobs.Worker(db).run_once()
    done = client.get(f"/api/genomics/runs/{run['id']}", headers=nurse.headers).json()
    assert done["status"] == "succeeded", done["error"]
    assert set(done["outputs"]) == {"bam", "bai", "vcf", "tbi", "qc"}
    assert done["qc"]["alignment"]["mapped_percent"] > 99

    vcf_id = done["outputs"]["vcf"]
    content = client.get(f"/api/genomics/files/{vcf_id}/content", headers=nurse.headers)
    assert content.status_code == 200
    text = gzip.decompress(content.content).decode()
    assert "#CHROM" in text and "\tNA-1\n" in text.split("#CHROM", 1)[1].split("\n", 1)[0] + "\n"
    listed = client.get("/api/genomics/files", params={"run_id": run["id"]},
                        headers=nurse.headers).json()
    assert {f["kind"] for f in listed} == {"bam", "bai", "vcf", "tbi", "qc"}
    logs = client.get(f"/api/genomics/runs/{run['id']}/logs", headers=nurse.headers).json()
    assert any("call finished" in line["line"] for line in logs)
    qc = client.get(f"/api/genomics/runs/{run['id']}/qc", headers=nurse.headers)
    assert qc.status_code == 200 and qc.json()["sample"] == "NA-1"
    # The calls went into the variant store, queryable by sample.
    found = client.get("/api/genomics/variants", params={"sample_id": ids["sample_id"]},
                       headers=nurse.headers).json()
    assert found["total"] == qc.json()["variants"]["variants"] > 0
    assert {v["run_id"] for v in found["variants"]} == {run["id"]}
    _check_pages(client, nurse.headers, run["id"], ids["sample_id"], found["total"])

    # Another organisation sees none of it.
    other = accounts.make("oscar", Role.clinician, org="org-b")
    assert client.get(f"/api/genomics/runs/{run['id']}", headers=other.headers
                      ).status_code == 404
    assert client.get(f"/api/genomics/files/{vcf_id}/content", headers=other.headers
                      ).status_code == 404
    assert client.get("/api/genomics/runs", headers=other.headers).json() == []


def test_cancel_a_queued_run(client: TestClient, accounts: Accounts,
                             dataset: SimulatedDataset) -> None:
    nurse = accounts.make("gina", Role.clinician)
    ids = _register(client, nurse.headers, dataset)
    run = client.post("/api/genomics/runs", json=ids, headers=nurse.headers).json()
    cancelled = client.post(f"/api/genomics/runs/{run['id']}/cancel", headers=nurse.headers)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = client.post(f"/api/genomics/runs/{run['id']}/cancel", headers=nurse.headers)
    assert again.status_code == 409


def test_bad_uploads_and_requests_are_4xx(client: TestClient, accounts: Accounts,
                                          tmp_path: Path) -> None:
    nurse = accounts.make("gina", Role.clinician)
    h = nurse.headers
    post = client.post
    assert post("/api/genomics/files", params={"filename": "e.fq"}, content=b"",
                headers=h).status_code == 422
    wrong = post("/api/genomics/files", params={"filename": "x.fq", "kind": "fastq"},
                 content=b">chr1\nACGT\n", headers=h)
    assert wrong.status_code == 422 and "starts with '@'" in wrong.json()["error"]["message"]
    mismatch = post("/api/genomics/files", params={"filename": "x.fq"},
                    content=b"@r\nAC\n+\nII\n", headers={**h, "X-Checksum-Sha256": "0" * 64})
    assert mismatch.status_code == 422 and "checksum" in mismatch.json()["error"]["message"]
    fastq = post("/api/genomics/files", params={"filename": "x.fq"},
                 content=b"@r\nAC\n+\nII\n", headers=h).json()
    not_fasta = post("/api/genomics/references", json={"name": "r", "file_id": fastq["id"]},
                     headers=h)
    assert not_fasta.status_code == 422
    bad_fa = post("/api/genomics/files", params={"filename": "bad.fa"},
                  content=b">a\nACXT\n", headers=h).json()
    bad_ref = post("/api/genomics/references", json={"name": "r", "file_id": bad_fa["id"]},
                   headers=h)
    assert bad_ref.status_code == 422
    assert "bad.fa line 2" in bad_ref.json()["error"]["message"]
    sample = post("/api/genomics/samples", json={"name": "S"}, headers=h).json()
    assert post("/api/genomics/samples", json={"name": "S"}, headers=h).status_code == 422
    assert post("/api/genomics/runs", json={"sample_id": sample["id"], "reference_id": "x",
                                            "fastq": [fastq["id"], fastq["id"]]},
                headers=h).status_code == 404
    assert post("/api/genomics/files", params={"filename": "x.fq"}, content=b"@r\n"
                ).status_code == 401


def test_roles_without_genomics_rights_are_refused(client: TestClient,
                                                   accounts: Accounts) -> None:
    counsellor = accounts.make("casey", Role.counsellor)
    refused = client.post("/api/genomics/samples", json={"name": "S"},
                          headers=counsellor.headers)
    assert refused.status_code == 403


def _check_pages(client: TestClient, h: dict[str, str], run_id: str, sample_id: str,
                 variants: int) -> None:
    """The web pages of a finished run: progress, QC report with its charts, sample, browser."""
    import re

    table = client.get("/genomics/_runs", headers=h)
    assert "succeeded" in table.text and "<progress" in table.text
    page = client.get(f"/genomics/runs/{run_id}", headers=h)
    assert page.status_code == 200
    assert page.text.count("<svg") == 2 and "Coverage histogram" in page.text
    assert "Insert size" in page.text and "Ti/Tv" in page.text
    assert re.search(r"Mapped</dt><dd>(99|100)\.\d\d%", page.text)
    assert "NA-1.vcf.gz" in page.text
    sample = client.get(f"/genomics/samples/{sample_id}", headers=h)
    assert sample.status_code == 200 and "Patient/pat-1" in sample.text
    assert "passing calls" in sample.text
    browser = client.get("/genomics/variants", params={"sample_id": sample_id}, headers=h)
    found = re.search(r'data-testid="variant-total">([\d,]+) call', browser.text)
    assert found and int(found.group(1).replace(",", "")) == variants
    bad = client.get("/genomics/variants", params={"start": "x"}, headers=h)
    assert bad.status_code == 200 and "start must be a whole number" in bad.text


def test_a_rejected_upload_leaves_no_blob(client: TestClient, accounts: Accounts,
                                          settings: Settings) -> None:
    import re

    def blobs() -> set[str]:
        return {p.name for p in settings.blob_dir.rglob("*")
                if p.is_file() and re.fullmatch(r"[0-9a-f]{64}", p.name)}

    nurse = accounts.make("gina", Role.clinician)
    kept = client.post("/api/genomics/files", params={"filename": "ok.fq"},
                       content=b"@r\nAC\n+\nII\n", headers=nurse.headers)
    assert kept.status_code == 201
    before = blobs()
    assert kept.json()["sha256"] in before
    refused = [
        ({"filename": "x.fq"}, b"@r\nACGT\n+\nIIII\n", {"X-Checksum-Sha256": "0" * 64}),
        ({"filename": "x.fq", "kind": "fastq"}, b">chr1\nACGT\n", {}),
        ({"filename": "x.bin"}, b"\x00\x01 not a genomics file", {}),
    ]
    for params, body, extra in refused:
        got = client.post("/api/genomics/files", params=params, content=body,
                          headers={**nurse.headers, **extra})
        assert got.status_code == 422, got.text
    assert blobs() == before
    # Refusing the same bytes as a stored file (wrong checksum) leaves that file's blob alone.
    again = client.post("/api/genomics/files", params={"filename": "ok.fq"},
                        content=b"@r\nAC\n+\nII\n",
                        headers={**nurse.headers, "X-Checksum-Sha256": "1" * 64})
    assert again.status_code == 422 and blobs() == before
    download = client.get(f"/api/genomics/files/{kept.json()['id']}/content",
                          headers=nurse.headers)
    assert download.content == b"@r\nAC\n+\nII\n"


def test_a_large_reference_is_checked_by_a_job(
        client: TestClient, accounts: Accounts, db: Database, dataset: SimulatedDataset,
        worker_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from careplane.genomics import service

    monkeypatch.setattr(service, "INLINE_CHECK_BYTES", 100)  # every FASTA here is "large"
    nurse = accounts.make("gina", Role.clinician)
    h = nurse.headers
    good = _upload(client, h, dataset.reference)
    registered = client.post("/api/genomics/references", json={"name": "big",
                                                               "file_id": good["id"]},
                             headers=h)
    # The request reads none of the FASTA: it answers at once and a job does the check.
    assert registered.status_code == 202, registered.text
    body = registered.json()
    assert body["status"] == "checking" and body["contigs"] == [] and body["job_id"]
    home = client.get("/genomics", headers=h)
    assert "checking" in home.text

    bad_fa = client.post("/api/genomics/files", params={"filename": "bad.fa"},
                         content=b">a\n" + b"ACGT\n" * 30 + b"ACXT\n", headers=h).json()
    bad = client.post("/api/genomics/references", json={"name": "bad", "file_id": bad_fa["id"]},
                      headers=h)
    assert bad.status_code == 202 and bad.json()["status"] == "checking"

    worker = jobs.Worker(db)
    assert worker.run_once() and worker.run_once()
    ready = client.get(f"/api/genomics/references/{body['id']}", headers=h).json()
    assert ready["status"] == "ready" and ready["error"] is None
    assert ready["contigs"] == [[k, v] for k, v in dataset.contigs.items()]
    assert ready["length"] == sum(dataset.contigs.values())
    failed = client.get(f"/api/genomics/references/{bad.json()['id']}", headers=h).json()
    assert failed["status"] == "failed" and "bad (bad.fa) line 32" in failed["error"]
    job = client.get(f"/api/jobs/{bad.json()['job_id']}", headers=h)
    assert job.status_code == 200 and job.json()["status"] == "failed"

    # A run needs a reference that did not fail its check.
    sample = client.post("/api/genomics/samples", json={"name": "S"}, headers=h).json()
    reads = [_upload(client, h, p, sample_id=sample["id"])["id"]
             for p in (dataset.r1, dataset.r2)]
    refused = client.post("/api/genomics/runs", json={
        "sample_id": sample["id"], "reference_id": bad.json()["id"], "fastq": reads},
        headers=h)
    assert refused.status_code == 422 and "failed its check" in refused.text
    accepted = client.post("/api/genomics/runs", json={
        "sample_id": sample["id"], "reference_id": body["id"], "fastq": reads}, headers=h)
    assert accepted.status_code == 202, accepted.text
