"""Content-addressed blob storage (images, sequencing files, exports).

Blobs are named by the SHA-256 of their content, streamed in and out in fixed-size chunks (a
multi-gigabyte FASTQ never sits in memory) and written atomically: a temporary file in the same
directory is fsynced and renamed into place, so a crash or a full disk leaves either the whole
blob or nothing. Encryption at rest wraps this store behind the same protocol.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

__all__ = ["CHUNK", "BlobNotFound", "BlobRef", "BlobStore", "BlobStoreFull", "BlobTooLarge",
           "LocalBlobStore"]

CHUNK = 1024 * 1024
LEFTOVER_AGE = 3600.0  # seconds without a write before a .part file counts as abandoned
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class BlobNotFound(KeyError):
    pass


class BlobStoreFull(OSError):
    """The store ran out of space; nothing of the blob was kept."""


class BlobTooLarge(ValueError):
    pass


@dataclass(frozen=True)
class BlobRef:
    sha256: str
    size: int


class BlobStore(Protocol):
    def put(self, source: BinaryIO | Iterable[bytes], *, max_bytes: int | None = None
            ) -> BlobRef: ...
    def put_bytes(self, data: bytes) -> BlobRef: ...
    def open(self, sha256: str) -> BinaryIO: ...
    def iter_bytes(self, sha256: str, start: int = 0, end: int | None = None
                   ) -> Iterator[bytes]: ...
    def exists(self, sha256: str) -> bool: ...
    def size(self, sha256: str) -> int: ...
    def delete(self, sha256: str) -> None: ...


def _chunks(source: BinaryIO | Iterable[bytes]) -> Iterator[bytes]:
    read = getattr(source, "read", None)
    if read is None:
        yield from source
        return
    while chunk := read(CHUNK):
        yield chunk


class LocalBlobStore:
    """Blobs as files under ``root/ab/cd/<sha256>``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._tmp = self.root / "tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)
        # Files of writes cut off by a crash. Every process (server, job workers, CLI) opens
        # the store, so only files nobody has written to for an hour go: a write in progress
        # in another process touches its file with every chunk.
        stale = time.time() - LEFTOVER_AGE
        for leftover in self._tmp.glob("*.part"):
            with contextlib.suppress(OSError):
                if leftover.stat().st_mtime < stale:
                    leftover.unlink()

    def path(self, sha256: str) -> Path:
        if not _HEX64.match(sha256):
            raise BlobNotFound(sha256)
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def put(self, source: BinaryIO | Iterable[bytes], *, max_bytes: int | None = None
            ) -> BlobRef:
        digest = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp, suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in _chunks(source):
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        raise BlobTooLarge(f"upload exceeds the limit of {max_bytes} bytes")
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            ref = BlobRef(digest.hexdigest(), size)
            final = self.path(ref.sha256)
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():
                tmp.unlink()
            else:
                os.replace(tmp, final)
            return ref
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise BlobStoreFull(exc.errno, "no space left for the blob store") from exc
            raise
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def put_bytes(self, data: bytes) -> BlobRef:
        return self.put([data])

    def open(self, sha256: str) -> BinaryIO:
        try:
            return self.path(sha256).open("rb")
        except FileNotFoundError as exc:
            raise BlobNotFound(sha256) from exc

    def iter_bytes(self, sha256: str, start: int = 0, end: int | None = None
                   ) -> Iterator[bytes]:
        """Stream ``[start, end)`` of a blob; ranges serve HTTP Range requests and htsget."""
        with self.open(sha256) as fh:
            fh.seek(start)
            remaining = None if end is None else max(0, end - start)
            while remaining is None or remaining > 0:
                chunk = fh.read(CHUNK if remaining is None else min(CHUNK, remaining))
                if not chunk:
                    break
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk

    def exists(self, sha256: str) -> bool:
        with contextlib.suppress(BlobNotFound):
            return self.path(sha256).is_file()
        return False

    def size(self, sha256: str) -> int:
        try:
            return self.path(sha256).stat().st_size
        except FileNotFoundError as exc:
            raise BlobNotFound(sha256) from exc

    def delete(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)
