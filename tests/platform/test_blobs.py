from __future__ import annotations

import errno
import hashlib
import os
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from careplane.platform.blobs import (
    BlobNotFound,
    BlobStoreFull,
    BlobTooLarge,
    LocalBlobStore,
)


def _leftovers(store: LocalBlobStore) -> list[Path]:
    return [p for p in store.root.rglob("*") if p.is_file()]


def test_content_addressed_round_trip(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    ref = store.put_bytes(b"chest x-ray pixels")
    assert ref.sha256 == hashlib.sha256(b"chest x-ray pixels").hexdigest()
    assert ref.size == 18
    with store.open(ref.sha256) as fh:
        assert fh.read() == b"chest x-ray pixels"
    assert store.put_bytes(b"chest x-ray pixels") == ref  # stored once
    assert len(_leftovers(store)) == 1


def test_ranges(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    ref = store.put_bytes(bytes(range(256)) * 10_000)
    assert b"".join(store.iter_bytes(ref.sha256, 100, 110)) == bytes(range(100, 110))
    assert b"".join(store.iter_bytes(ref.sha256, 2_559_990)) == bytes(range(246, 256))
    assert store.size(ref.sha256) == 2_560_000


def test_missing_and_malformed_names(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    with pytest.raises(BlobNotFound):
        store.open("0" * 64)
    with pytest.raises(BlobNotFound):
        store.open("../../etc/passwd")
    assert not store.exists("not-a-hash")


def test_large_stream_does_not_sit_in_memory(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    chunk = os.urandom(1024 * 1024)
    digest = hashlib.sha256()

    def source() -> Iterator[bytes]:
        for _ in range(96):  # 96 MiB
            digest.update(chunk)
            yield chunk

    tracemalloc.start()
    try:
        ref = store.put(source())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ref.size == 96 * 1024 * 1024
    assert ref.sha256 == digest.hexdigest()
    assert peak < 16 * 1024 * 1024


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)

    def broken() -> Iterator[bytes]:
        yield b"first half"
        raise ConnectionError("client went away")

    with pytest.raises(ConnectionError):
        store.put(broken())
    assert _leftovers(store) == []


def test_full_disk_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalBlobStore(tmp_path)
    real_fsync = os.fsync

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(BlobStoreFull):
        store.put_bytes(b"x" * 1000)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert _leftovers(store) == []


def test_size_limit(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    with pytest.raises(BlobTooLarge):
        store.put([b"x" * 600, b"y" * 600], max_bytes=1000)
    assert _leftovers(store) == []


def test_crash_leftovers_are_cleaned_at_start(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    crashed = store.root / "tmp" / "abc.part"
    crashed.write_bytes(b"half a file")
    os.utime(crashed, (1, 1))
    LocalBlobStore(tmp_path)
    assert _leftovers(store) == []


def test_another_process_writing_keeps_its_file(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    writing = store.root / "tmp" / "in-progress.part"
    writing.write_bytes(b"the first chunks")
    LocalBlobStore(tmp_path)  # a job worker or CLI command opening the same store
    assert writing.exists()
