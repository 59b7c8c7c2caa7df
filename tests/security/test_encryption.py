"""Encrypted blob store: same protocol, ciphertext on disk, tamper-evident, rotatable keys."""

from __future__ import annotations

import hashlib
import io
import os
import stat
from pathlib import Path

import pytest

from careplane.platform.blobs import BlobNotFound, BlobTooLarge, LocalBlobStore
from careplane.security.encryption import (
    BlobIntegrityError,
    EncryptedBlobStore,
    KeyProviderError,
    LocalKeyProvider,
    encrypted_blob_store,
)

SMALL = 1024  # small chunks make every chunk boundary cheap to exercise


@pytest.fixture
def store(tmp_path: Path) -> EncryptedBlobStore:
    return EncryptedBlobStore(LocalBlobStore(tmp_path / "blobs"),
                              LocalKeyProvider(tmp_path / "keys" / "blob.keys"),
                              chunk_size=SMALL)


def _marker(n: int) -> bytes:
    unit = b"PATIENT-JANE-DOE-1970-01-01;"
    return (unit * (n // len(unit) + 1))[:n]


@pytest.mark.parametrize("n", [0, 1, SMALL - 1, SMALL, SMALL + 1, 3 * SMALL + SMALL // 2])
def test_round_trip_and_ranges(store: EncryptedBlobStore, n: int) -> None:
    data = _marker(n)
    ref = store.put(io.BytesIO(data))
    assert ref.sha256 == hashlib.sha256(data).hexdigest() and ref.size == n
    assert store.exists(ref.sha256) and store.size(ref.sha256) == n
    with store.open(ref.sha256) as fh:
        assert fh.read() == data
    assert b"".join(store.iter_bytes(ref.sha256)) == data
    for start, end in ((0, 1), (SMALL - 3, SMALL + 3), (n // 2, None), (n, None), (5, 2)):
        expected = data[start:end] if end is None or end >= start else b""
        assert b"".join(store.iter_bytes(ref.sha256, start, end)) == expected


def test_odd_pieces_and_seeking(store: EncryptedBlobStore) -> None:
    data = _marker(5 * SMALL + 7)
    pieces = [data[i:i + 333] for i in range(0, len(data), 333)]
    ref = store.put(pieces)
    assert ref.sha256 == hashlib.sha256(data).hexdigest()
    with store.open(ref.sha256) as fh:
        fh.seek(2 * SMALL + 5)
        assert fh.read(10) == data[2 * SMALL + 5:2 * SMALL + 15]
        fh.seek(-4, io.SEEK_END)
        assert fh.read() == data[-4:]
        assert fh.tell() == len(data)


def test_no_file_on_disk_holds_the_plaintext(store: EncryptedBlobStore, tmp_path: Path) -> None:
    data = _marker(10 * SMALL)
    store.put_bytes(data)
    store.put_bytes(b"PATIENT-JANE-DOE-1970-01-01;")
    files = [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]
    assert len(files) == 2
    for path in files:
        raw = path.read_bytes()
        assert b"PATIENT-JANE-DOE" not in raw and b"JANE" not in raw
        assert raw[:4] == b"CPB1"


def test_same_content_is_stored_once(store: EncryptedBlobStore, tmp_path: Path) -> None:
    a = store.put_bytes(b"x" * 3000)
    b = store.put_bytes(b"x" * 3000)
    assert a == b
    assert len([p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]) == 1


def test_tampering_is_detected(store: EncryptedBlobStore) -> None:
    one = store.put_bytes(_marker(3 * SMALL))
    two = store.put_bytes(b"another blob" * 400)
    path = store.inner.path(one.sha256)
    raw = bytearray(path.read_bytes())
    raw[200] ^= 1  # a bit of the first chunk
    path.write_bytes(bytes(raw))
    with pytest.raises(BlobIntegrityError):
        b"".join(store.iter_bytes(one.sha256))
    # A valid sealed file under another blob's name does not open.
    store.inner.path(one.sha256).write_bytes(store.inner.path(two.sha256).read_bytes())
    with pytest.raises(BlobIntegrityError):
        store.open(one.sha256)
    # Dropping the last chunk is noticed too.
    three = store.put_bytes(_marker(3 * SMALL))
    path = store.inner.path(three.sha256)
    path.write_bytes(path.read_bytes()[:-(SMALL + 16)])
    with pytest.raises(BlobIntegrityError):
        b"".join(store.iter_bytes(three.sha256))


def test_missing_blob_and_limits(store: EncryptedBlobStore, tmp_path: Path) -> None:
    with pytest.raises(BlobNotFound):
        store.open("0" * 64)
    with pytest.raises(BlobNotFound):
        store.open("../../etc/passwd")
    with pytest.raises(BlobTooLarge):
        store.put([b"x" * 600, b"y" * 600], max_bytes=1000)
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []
    ref = store.put_bytes(b"bye")
    store.delete(ref.sha256)
    assert not store.exists(ref.sha256)


def test_key_rotation_without_downtime(store: EncryptedBlobStore, tmp_path: Path) -> None:
    keys = store.keys
    assert isinstance(keys, LocalKeyProvider)
    key_file = tmp_path / "keys" / "blob.keys"
    old = store.put_bytes(b"written under the first key" * 100)
    first = store.key_id(old.sha256)
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    # Another process (another provider on the same file) rotates.
    second = LocalKeyProvider(key_file).rotate()
    assert second != first
    new = store.put_bytes(b"written under the second key" * 100)
    assert store.key_id(new.sha256) == second
    with store.open(old.sha256) as fh:
        assert fh.read() == b"written under the first key" * 100
    # Re-wrap everything, then the first key can go.
    assert sorted(store.rewrap(sha) for sha in store.all_blobs()) == [False, True]
    assert store.key_id(old.sha256) == second
    keys.retire(first or "")
    with store.open(old.sha256) as fh:
        assert fh.read() == b"written under the first key" * 100
    with pytest.raises(KeyProviderError):
        keys.retire(second)


def test_plaintext_blobs_from_before_are_read_and_converted(tmp_path: Path) -> None:
    plain = LocalBlobStore(tmp_path / "blobs")
    legacy = plain.put_bytes(b"PATIENT-JANE-DOE legacy" * 50)
    store = encrypted_blob_store(tmp_path / "blobs", tmp_path / "keys" / "blob.keys")
    assert store.key_id(legacy.sha256) is None
    with store.open(legacy.sha256) as fh:
        assert fh.read() == b"PATIENT-JANE-DOE legacy" * 50
    assert store.size(legacy.sha256) == legacy.size
    assert store.rewrap(legacy.sha256)
    assert b"JANE" not in store.inner.path(legacy.sha256).read_bytes()
    assert b"".join(store.iter_bytes(legacy.sha256)) == b"PATIENT-JANE-DOE legacy" * 50


def test_unreadable_key_file_is_a_clear_error(tmp_path: Path) -> None:
    key_file = tmp_path / "blob.keys"
    key_file.write_text("{not json")
    with pytest.raises(KeyProviderError, match="unreadable"):
        LocalKeyProvider(key_file).current()


def test_default_chunk_size_streams_megabytes(tmp_path: Path) -> None:
    store = encrypted_blob_store(tmp_path / "blobs", tmp_path / "blob.keys")
    data = os.urandom(3 * 1024 * 1024 + 123)
    ref = store.put(io.BytesIO(data))
    assert store.size(ref.sha256) == len(data)
    assert b"".join(store.iter_bytes(ref.sha256, 1024 * 1024 - 10, 2 * 1024 * 1024 + 10)) == \
        data[1024 * 1024 - 10:2 * 1024 * 1024 + 10]


def test_local_copy_for_tools_is_removed_afterwards(store: EncryptedBlobStore,
                                                    tmp_path: Path) -> None:
    ref = store.put_bytes(_marker(2 * SMALL + 1))
    with store.local_copy(ref.sha256, tmp_path / "work") as path:
        assert path.read_bytes() == _marker(2 * SMALL + 1)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert not path.exists()
