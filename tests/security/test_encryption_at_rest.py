"""Encryption at rest, switched on: every blob the platform writes is sealed on disk.

Whole flows (DICOM STOW-RS and WADO-RS, a genomics upload, reference and pipeline run with its
published outputs) go through the running application, then every file under the blob
directory is searched for pieces of what was sent or served. The key file is made private on
first start, and a key file that cannot be used stops the start.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient

from careplane.app import create_app
from careplane.genomics.simulate import SimulatedDataset, simulate_dataset
from careplane.platform import jobs
from careplane.platform.db import Database
from careplane.security import Role
from careplane.security.encryption import (
    EncryptedBlobStore,
    KeyProviderError,
    blob_key_file,
    blob_store_for,
)
from careplane.settings import Settings
from tests.conftest import Accounts
from tests.imaging.conftest import make_instance, multipart, split_multipart


def _windows(data: bytes, width: int = 48, count: int = 24) -> list[bytes]:
    """Distinct pieces spread over the plaintext; any one of them on disk is a leak."""
    if len(data) <= width:
        return [data]
    step = max(1, (len(data) - width) // count)
    return [data[i:i + width] for i in range(0, len(data) - width, step)]


def _blob_files(settings: Settings) -> list[Path]:
    return [p for p in settings.blob_dir.rglob("*") if p.is_file()]


def _assert_sealed(settings: Settings, plaintexts: list[bytes]) -> None:
    files = _blob_files(settings)
    assert files, "nothing was stored"
    for path in files:
        raw = path.read_bytes()
        assert raw[:4] == b"CPB1", f"{path} is not sealed"
        for plain in plaintexts:
            for window in _windows(plain):
                assert window not in raw, f"{path} holds plaintext"


def test_dicom_stored_sealed_and_served_whole(client: TestClient, accounts: Accounts,
                                              settings: Settings) -> None:
    radiologist = accounts.make("jun", Role.radiologist)
    # 1.5 MiB: the frames asked for below straddle the store's 1 MiB chunks.
    instance = make_instance(patient_name="Sealed^Patient", rows=512, columns=512, frames=3)
    pixels = pydicom.dcmread(io.BytesIO(instance)).PixelData
    frame = len(pixels) // 3
    body, headers = multipart([instance])
    stored = client.post("/dicomweb/studies", content=body,
                         headers={**headers, **radiologist.headers})
    assert stored.status_code == 200, stored.text
    assert isinstance(client.app.state.platform.blobs,  # type: ignore[attr-defined]
                      EncryptedBlobStore)
    _assert_sealed(settings, [instance, b"Sealed^Patient"])

    tags = client.get("/dicomweb/instances", headers=radiologist.headers).json()[0]
    study, series, sop = (tags[t]["Value"][0] for t in ("0020000D", "0020000E", "00080018"))
    base = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"
    whole = client.get(base, headers=radiologist.headers)
    assert whole.status_code == 200
    ((_, served),) = split_multipart(whole.content, whole.headers["content-type"])
    assert served == instance
    frames = client.get(f"{base}/frames/2,3", headers=radiologist.headers)
    assert frames.status_code == 200, frames.text
    parts = split_multipart(frames.content, frames.headers["content-type"])
    assert [data for _, data in parts] == [pixels[frame:2 * frame], pixels[2 * frame:]]
    rendered = client.get(f"{base}/frames/3/rendered", headers={**radiologist.headers,
                                                                "Accept": "image/png"})
    assert rendered.status_code == 200 and rendered.content[:4] == b"\x89PNG"


@pytest.fixture
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> SimulatedDataset:
    return simulate_dataset(tmp_path_factory.mktemp("sealed-sim"), seed=11, length=[8_000],
                            coverage=12, snv_rate=2e-3, indel_rate=0.0)


@pytest.fixture
def worker_env(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    monkeypatch.setenv("CAREPLANE_DATABASE_URL", settings.db_url)
    monkeypatch.delenv("CAREPLANE_DATA_DIR", raising=False)
    monkeypatch.setenv("CAREPLANE_ENV", "test")


def _upload(client: TestClient, headers: dict[str, str], path: Path, **params: str) -> Any:
    response = client.post("/api/genomics/files", params={"filename": path.name, **params},
                           content=path.read_bytes(), headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


def test_genomics_run_reads_decrypted_copies_and_publishes_sealed_outputs(
        client: TestClient, accounts: Accounts, db: Database, settings: Settings,
        small_dataset: SimulatedDataset, worker_env: None) -> None:
    ds = small_dataset
    nurse = accounts.make("gina", Role.clinician)
    h = nurse.headers
    sid = client.post("/api/genomics/samples", json={"name": "SEALED-1"}, headers=h).json()["id"]
    fasta = _upload(client, h, ds.reference)
    reference = client.post("/api/genomics/references",
                            json={"name": "sim", "file_id": fasta["id"]}, headers=h)
    assert reference.status_code == 201, reference.text  # validated from a decrypted copy
    reads = [_upload(client, h, p, sample_id=sid) for p in (ds.r1, ds.r2)]
    plain_reads = [gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
                   for p in (ds.r1, ds.r2)]
    _assert_sealed(settings, [ds.reference.read_bytes(), ds.r1.read_bytes(),
                              ds.r2.read_bytes(), *plain_reads])

    run = client.post("/api/genomics/runs", json={
        "sample_id": sid, "reference_id": reference.json()["id"],
        "fastq": [r["id"] for r in reads], "threads": 1}, headers=h).json()
    assert jobs.Worker(db).run_once()
    done = client.get(f"/api/genomics/runs/{run['id']}", headers=h).json()
    assert done["status"] == "succeeded", done["error"]

    served = {}
    for kind, file_id in done["outputs"].items():
        content = client.get(f"/api/genomics/files/{file_id}/content", headers=h)
        assert content.status_code == 200
        assert hashlib.sha256(content.content).hexdigest() == content.headers[
            "x-checksum-sha256"]
        served[kind] = content.content
    assert b"#CHROM" in gzip.decompress(served["vcf"])
    _assert_sealed(settings, [*served.values(), gzip.decompress(served["vcf"])])
    # The decrypted copies the tools read are gone; only the reference stays (its indexes
    # hold the sequence anyway), beside them, outside the blob directory.
    assert not (settings.data_dir / "genomics" / "work" / run["id"]).exists()
    scratch = settings.data_dir / "scratch"
    assert not scratch.exists() or not [p for p in scratch.iterdir() if p.is_file()]


@pytest.fixture
def bare_settings(tmp_path: Path) -> Settings:
    return Settings(env="test", data_dir=tmp_path / "fresh", job_workers=0, log_json=False)


def test_key_file_made_private_on_first_start(bare_settings: Settings) -> None:
    key_file = blob_key_file(bare_settings.data_dir)
    assert not key_file.exists()
    app = create_app(bare_settings)
    assert isinstance(app.state.platform.blobs, EncryptedBlobStore)
    app.state.platform.db.dispose()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700


@pytest.fixture
def made_key(bare_settings: Settings) -> Iterator[Path]:
    blob_store_for(bare_settings)
    key_file = blob_key_file(bare_settings.data_dir)
    yield key_file
    key_file.chmod(0o600)


@pytest.mark.parametrize("damage", ["world-readable", "garbage", "unreadable"])
def test_unusable_key_file_stops_the_start(bare_settings: Settings, made_key: Path,
                                           damage: str) -> None:
    if damage == "world-readable":
        made_key.chmod(0o644)
        expected = "chmod 600"
    elif damage == "garbage":
        made_key.write_text("{not json")
        made_key.chmod(0o600)
        expected = "unreadable"
    else:
        if os.geteuid() == 0:
            pytest.skip("root reads files whatever their mode")
        made_key.chmod(0o000)
        expected = "unreadable"
    with pytest.raises(KeyProviderError, match=expected):
        create_app(bare_settings)


def test_unreadable_key_file_is_a_clear_cli_error(bare_settings: Settings, made_key: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from careplane.cli import app

    made_key.chmod(0o644)
    monkeypatch.setenv("CAREPLANE_DATA_DIR", str(bare_settings.data_dir))
    monkeypatch.setenv("CAREPLANE_ENV", "test")
    result = CliRunner().invoke(app, ["keys", "rewrap-blobs"])
    assert result.exit_code == 2
    assert "chmod 600" in result.output and "Traceback" not in result.output


def test_stale_scratch_copies_are_swept(bare_settings: Settings) -> None:
    store = blob_store_for(bare_settings)
    ref = store.put_bytes(b"scratch me " * 100)
    with store.local_copy(ref.sha256) as copy:
        assert copy.parent == bare_settings.data_dir / "scratch"
        assert copy.read_bytes() == b"scratch me " * 100
        assert stat.S_IMODE(copy.stat().st_mode) == 0o600
        assert store.sweep_scratch() == 0  # in use, young: kept
    assert not copy.exists()
    leftover = store.scratch / f".{ref.sha256[:12]}-crashed"
    leftover.write_bytes(b"left by a crash")
    os.utime(leftover, (1, 1))
    assert store.sweep_scratch() == 1 and not leftover.exists()
