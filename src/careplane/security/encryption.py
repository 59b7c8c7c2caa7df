"""Encryption at rest for blobs: AES-256-GCM envelope encryption, streamed in chunks.

Each blob gets its own random 256-bit data key. The data is sealed chunk by chunk (1 MiB of
plaintext per chunk), each chunk with its own nonce (a per-blob random prefix and the chunk's
index) and with its index and a last-chunk flag as associated data, so chunks can be neither
reordered nor dropped unnoticed. The data key is wrapped with a key-encryption key (KEK) from a
:class:`KeyProvider`, with the blob's plaintext SHA-256 as associated data: a file moved under
another blob's name does not open. Content addressing is unchanged (the name is the SHA-256 of
the plaintext), so callers see exactly the :class:`~careplane.platform.blobs.BlobStore`
protocol.

File layout (``ENC_MAGIC`` files; anything else under the store is a blob written before
encryption was switched on and is read as plaintext until :meth:`EncryptedBlobStore.rewrap`
converts it)::

    header (fixed 138 bytes): magic "CPB1" | version | kid length | kid (64, padded)
                              | wrap nonce (12) | wrapped data key (48) | nonce prefix (4)
                              | chunk size (4)
    chunks: AES-GCM(data key, nonce = prefix || index (8 bytes), plaintext chunk) + 16-byte tag

Key rotation needs no downtime: :meth:`LocalKeyProvider.rotate` makes a new KEK that wraps
every new blob; old blobs stay readable with their old KEK (named in their header), and
:meth:`EncryptedBlobStore.rewrap` re-wraps a blob's data key under the current KEK by
rewriting only its header. When no blob names an old KEK any more it can be retired.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import io
import json
import os
import secrets
import struct
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Protocol, cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from careplane.platform.blobs import (
    CHUNK,
    BlobNotFound,
    BlobRef,
    BlobStoreFull,
    BlobTooLarge,
    LocalBlobStore,
)
from careplane.settings import Settings, SettingsError

__all__ = ["ENC_MAGIC", "BlobIntegrityError", "EncryptedBlobStore", "KeyProvider",
           "KeyProviderError", "LocalKeyProvider", "blob_key_file", "blob_store_for",
           "encrypted_blob_store"]

ENC_MAGIC = b"CPB1"
_VERSION = 1
_KID_MAX = 64
_HEADER = struct.Struct(">4sBB64s12s48s4sI")
HEADER_LEN = _HEADER.size
_TAG = 16


class KeyProviderError(SettingsError):
    """A key-encryption key is missing or the key file is unusable (a server refuses to start
    rather than write blobs it could not read back)."""


class BlobIntegrityError(BlobNotFound):
    """The stored blob does not decrypt: damaged, or not the blob of this name."""


class KeyProvider(Protocol):
    """Where key-encryption keys come from (a local file here; a KMS or HSM elsewhere)."""

    def current(self) -> tuple[str, bytes]:
        """The id and bytes of the KEK that wraps new data keys."""

    def key(self, kid: str) -> bytes:
        """The KEK with this id (for blobs wrapped before a rotation)."""


class LocalKeyProvider:
    """KEKs in one JSON file (mode 0600) under the data directory; made on first use.

    Re-read when the file changes, so a rotation done by ``careplane keys rotate`` in another
    process is picked up by running servers without a restart.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._mtime: int | None = None
        self._current = ""
        self._keys: dict[str, bytes] = {}

    def _load(self) -> None:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if mtime is not None and mtime == self._mtime:
            return
        if mtime is None:
            self._write(*self._new(), keys={})
            return
        mode = self.path.stat().st_mode
        if mode & 0o077:
            raise KeyProviderError(
                f"the blob key file {self.path} can be read by other users (mode "
                f"{mode & 0o777:o}); make it private with `chmod 600 {self.path}`")
        try:
            data = json.loads(self.path.read_text())
            keys = {kid: base64.b64decode(entry["key"]) for kid, entry in data["keys"].items()}
            current = data["current"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KeyProviderError(f"the blob key file {self.path} is unreadable: {exc}") \
                from exc
        if current not in keys or any(len(k) != 32 for k in keys.values()):
            raise KeyProviderError(f"the blob key file {self.path} is inconsistent")
        self._current, self._keys, self._mtime = current, keys, mtime

    @staticmethod
    def _new() -> tuple[str, bytes]:
        return datetime.now(UTC).strftime("k%Y%m%d%H%M%S") + secrets.token_hex(3), \
            AESGCM.generate_key(256)

    def _write(self, kid: str, key: bytes, *, keys: dict[str, bytes]) -> None:
        keys = {**keys, kid: key}
        body = json.dumps({"version": 1, "current": kid, "keys": {
            k: {"key": base64.b64encode(v).decode()} for k, v in keys.items()}}, indent=1)
        if not self.path.parent.exists():
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".keys-")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(body)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._current, self._keys = kid, keys
        self._mtime = self.path.stat().st_mtime_ns

    def current(self) -> tuple[str, bytes]:
        with self._lock:
            self._load()
            return self._current, self._keys[self._current]

    def key(self, kid: str) -> bytes:
        with self._lock:
            self._load()
            if kid not in self._keys:
                raise KeyProviderError(f"no blob key {kid!r} in {self.path}")
            return self._keys[kid]

    def kids(self) -> list[str]:
        with self._lock:
            self._load()
            return sorted(self._keys)

    def rotate(self) -> str:
        """Make a new current KEK; the old ones stay for reading older blobs."""
        with self._lock:
            self._load()
            kid, key = self._new()
            self._write(kid, key, keys=self._keys)
            return kid

    def retire(self, kid: str) -> None:
        """Forget an old KEK (only once no blob is wrapped with it any more)."""
        with self._lock:
            self._load()
            if kid == self._current:
                raise KeyProviderError("the current blob key cannot be retired; rotate first")
            keys = {k: v for k, v in self._keys.items() if k != kid}
            self._write(self._current, self._keys[self._current], keys=keys)


def _chunk_nonce(prefix: bytes, index: int) -> bytes:
    return prefix + struct.pack(">Q", index)


def _chunk_aad(prefix: bytes, index: int, last: bool) -> bytes:
    return b"careplane-blob-chunk" + prefix + struct.pack(">QB", index, int(last))


def _wrap_aad(sha256: str, prefix: bytes, chunk_size: int) -> bytes:
    return b"careplane-blob-key" + sha256.encode() + prefix + struct.pack(">I", chunk_size)


class _Header:
    __slots__ = ("chunk_size", "kid", "prefix", "wrap_nonce", "wrapped")

    def __init__(self, kid: str, wrap_nonce: bytes, wrapped: bytes, prefix: bytes,
                 chunk_size: int) -> None:
        self.kid, self.wrap_nonce, self.wrapped = kid, wrap_nonce, wrapped
        self.prefix, self.chunk_size = prefix, chunk_size

    def pack(self) -> bytes:
        kid = self.kid.encode()
        return _HEADER.pack(ENC_MAGIC, _VERSION, len(kid), kid.ljust(_KID_MAX, b"\0"),
                            self.wrap_nonce, self.wrapped, self.prefix, self.chunk_size)

    @classmethod
    def unpack(cls, raw: bytes) -> _Header | None:
        if len(raw) < HEADER_LEN or raw[:4] != ENC_MAGIC:
            return None
        _magic, version, kid_len, kid, nonce, wrapped, prefix, size = _HEADER.unpack(
            raw[:HEADER_LEN])
        if version != _VERSION or kid_len > _KID_MAX or not 0 < size <= 64 * 1024 * 1024:
            return None
        return cls(kid[:kid_len].decode(errors="replace"), nonce, wrapped, prefix, size)


class _DecryptedFile(io.BufferedIOBase):
    """A seekable read-only view of an encrypted blob's plaintext.

    Reads are whole (``read(n)`` returns ``n`` bytes unless the blob ends first), as readers
    of real files such as pydicom expect. Deliberately not an :class:`io.BufferedReader`:
    those are taken for files on disk and re-opened by name, which would read ciphertext.
    """

    def __init__(self, store: EncryptedBlobStore, fh: BinaryIO, header: _Header, dek: bytes,
                 size: int) -> None:
        super().__init__()
        self._store, self._fh, self._header = store, fh, header
        self._aead = AESGCM(dek)
        self._size = size
        self._pos = 0
        self._cache: tuple[int, bytes] | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence not in (io.SEEK_SET, io.SEEK_CUR, io.SEEK_END):
            raise ValueError(f"invalid whence {whence}")
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def _chunk(self, index: int) -> bytes:
        if self._cache is not None and self._cache[0] == index:
            return self._cache[1]
        plain = self._store._read_chunk(self._fh, self._header, self._aead, index, self._size)
        self._cache = (index, plain)
        return plain

    def read1(self, size: int | None = -1) -> bytes:
        """At most ``size`` bytes, from one chunk."""
        if self.closed:
            raise ValueError("read of a closed blob")
        if self._pos >= self._size or size == 0:
            return b""
        index, offset = divmod(self._pos, self._header.chunk_size)
        chunk = self._chunk(index)
        stop = len(chunk) if size is None or size < 0 else offset + size
        data = chunk[offset:stop]
        self._pos += len(data)
        return data

    def read(self, size: int | None = -1) -> bytes:
        wanted = max(0, self._size - self._pos) if size is None or size < 0 else size
        pieces: list[bytes] = []
        got = 0
        while got < wanted:
            piece = self.read1(wanted - got)
            if not piece:
                break
            pieces.append(piece)
            got += len(piece)
        return b"".join(pieces)

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._fh.close()
            self._cache = None
        super().close()


class EncryptedBlobStore:
    """The :class:`BlobStore` protocol over a :class:`LocalBlobStore`'s directory, encrypted.

    ``scratch`` is where :meth:`local_copy` puts decrypted copies for tools that need a file
    path (by default a ``scratch`` directory beside the blob directory, never inside it).
    """

    def __init__(self, inner: LocalBlobStore, keys: KeyProvider, *,
                 chunk_size: int = CHUNK, scratch: Path | None = None) -> None:
        self.inner = inner
        self.keys = keys
        self.chunk_size = chunk_size
        self.scratch = scratch if scratch is not None else inner.root.parent / "scratch"
        self._tmp = inner.root / "tmp"

    # -- writing --------------------------------------------------------------------------

    def put(self, source: BinaryIO | Iterable[bytes], *, max_bytes: int | None = None
            ) -> BlobRef:
        return self._put(source, max_bytes=max_bytes)

    def _put(self, source: BinaryIO | Iterable[bytes], *, max_bytes: int | None = None,
             replace: bool = False) -> BlobRef:
        kid, kek = self.keys.current()
        dek = AESGCM.generate_key(256)
        aead = AESGCM(dek)
        prefix = secrets.token_bytes(4)
        digest = hashlib.sha256()
        size = 0
        index = 0
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp, suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(b"\0" * HEADER_LEN)  # filled in once the plaintext hash is known
                pending = b""
                for piece in self._rechunk(source):
                    size += len(piece)
                    if max_bytes is not None and size > max_bytes:
                        raise BlobTooLarge(f"upload exceeds the limit of {max_bytes} bytes")
                    digest.update(piece)
                    if pending:
                        out.write(aead.encrypt(_chunk_nonce(prefix, index), pending,
                                               _chunk_aad(prefix, index, False)))
                        index += 1
                    pending = piece
                out.write(aead.encrypt(_chunk_nonce(prefix, index), pending,
                                       _chunk_aad(prefix, index, True)))
                sha = digest.hexdigest()
                wrap_nonce = secrets.token_bytes(12)
                wrapped = AESGCM(kek).encrypt(wrap_nonce, dek,
                                              _wrap_aad(sha, prefix, self.chunk_size))
                out.seek(0)
                out.write(_Header(kid, wrap_nonce, wrapped, prefix, self.chunk_size).pack())
                out.flush()
                os.fsync(out.fileno())
            final = self.inner.path(sha)
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists() and not replace:
                tmp.unlink()
            else:
                os.replace(tmp, final)
            return BlobRef(sha, size)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise BlobStoreFull(exc.errno, "no space left for the blob store") from exc
            raise
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _rechunk(self, source: BinaryIO | Iterable[bytes]) -> Iterator[bytes]:
        """The source as pieces of exactly ``chunk_size`` bytes (the last one shorter)."""
        read = getattr(source, "read", None)
        if read is not None:
            while piece := read(self.chunk_size):
                while len(piece) < self.chunk_size:
                    more = read(self.chunk_size - len(piece))
                    if not more:
                        break
                    piece += more
                yield piece
            return
        buffer = bytearray()
        for part in source:
            buffer += part
            while len(buffer) >= self.chunk_size:
                yield bytes(buffer[:self.chunk_size])
                del buffer[:self.chunk_size]
        if buffer:
            yield bytes(buffer)

    def put_bytes(self, data: bytes) -> BlobRef:
        return self.put([data])

    # -- reading --------------------------------------------------------------------------

    def _open_raw(self, sha256: str) -> BinaryIO:
        try:
            return self.inner.path(sha256).open("rb")
        except FileNotFoundError as exc:
            raise BlobNotFound(sha256) from exc

    def _header(self, fh: BinaryIO) -> _Header | None:
        fh.seek(0)
        header = _Header.unpack(fh.read(HEADER_LEN))
        fh.seek(0)
        return header

    def _dek(self, sha256: str, header: _Header) -> bytes:
        try:
            kek = self.keys.key(header.kid)
            return AESGCM(kek).decrypt(header.wrap_nonce, header.wrapped,
                                       _wrap_aad(sha256, header.prefix, header.chunk_size))
        except (InvalidTag, KeyProviderError) as exc:
            raise BlobIntegrityError(f"blob {sha256} does not decrypt: {exc}") from exc

    def _plain_size(self, header: _Header, file_size: int) -> int:
        body = file_size - HEADER_LEN
        chunks = max(1, -(-body // (header.chunk_size + _TAG)))
        return body - chunks * _TAG

    def _read_chunk(self, fh: BinaryIO, header: _Header, aead: AESGCM, index: int,
                    plain_size: int) -> bytes:
        size = header.chunk_size
        last_index = max(0, (plain_size - 1) // size) if plain_size else 0
        fh.seek(HEADER_LEN + index * (size + _TAG))
        sealed = fh.read(size + _TAG)
        try:
            return aead.decrypt(_chunk_nonce(header.prefix, index), sealed,
                                _chunk_aad(header.prefix, index, index == last_index))
        except InvalidTag as exc:
            raise BlobIntegrityError(f"chunk {index} of a blob does not decrypt") from exc

    def _sealed(self, sha256: str, fh: BinaryIO) -> tuple[_Header, bytes] | None:
        """The header and data key of a sealed blob; None for a plaintext one from before.

        A plaintext blob that merely starts like a header is told apart by its hash.
        """
        header = self._header(fh)
        if header is None:
            return None
        try:
            return header, self._dek(sha256, header)
        except BlobIntegrityError:
            digest = hashlib.sha256()
            fh.seek(0)
            while piece := fh.read(CHUNK):
                digest.update(piece)
            fh.seek(0)
            if digest.hexdigest() == sha256:
                return None
            raise

    def open(self, sha256: str) -> BinaryIO:
        fh = self._open_raw(sha256)
        try:
            sealed = self._sealed(sha256, fh)
            if sealed is None:
                return fh  # written before encryption was switched on
            header, dek = sealed
            size = self._plain_size(header, os.fstat(fh.fileno()).st_size)
        except BaseException:
            fh.close()
            raise
        return cast(BinaryIO, _DecryptedFile(self, fh, header, dek, size))

    def iter_bytes(self, sha256: str, start: int = 0, end: int | None = None
                   ) -> Iterator[bytes]:
        """Stream ``[start, end)`` of the plaintext, decrypting only the chunks it spans."""
        with self._open_raw(sha256) as fh:
            sealed = self._sealed(sha256, fh)
            if sealed is None:
                yield from self.inner.iter_bytes(sha256, start, end)
                return
            header, dek = sealed
            aead = AESGCM(dek)
            size = self._plain_size(header, os.fstat(fh.fileno()).st_size)
            stop = size if end is None else min(end, size)
            position = max(0, start)
            while position < stop:
                index, offset = divmod(position, header.chunk_size)
                plain = self._read_chunk(fh, header, aead, index, size)
                piece = plain[offset:offset + (stop - position)]
                if not piece:
                    break
                position += len(piece)
                yield piece

    def exists(self, sha256: str) -> bool:
        return self.inner.exists(sha256)

    def size(self, sha256: str) -> int:
        with self._open_raw(sha256) as fh:
            sealed = self._sealed(sha256, fh)
            file_size = os.fstat(fh.fileno()).st_size
        return file_size if sealed is None else self._plain_size(sealed[0], file_size)

    def delete(self, sha256: str) -> None:
        self.inner.delete(sha256)

    # -- keys -----------------------------------------------------------------------------

    def key_id(self, sha256: str) -> str | None:
        """The KEK a blob is wrapped with (None: stored in plaintext, from before)."""
        with self._open_raw(sha256) as fh:
            sealed = self._sealed(sha256, fh)
        return sealed[0].kid if sealed else None

    def rewrap(self, sha256: str) -> bool:
        """Wrap this blob's data key with the current KEK (or encrypt a plaintext blob).

        Only the fixed-size header is rewritten (one sector, in place), so re-keying a store
        costs a read of each header, not a copy of the data. Returns True if it changed.
        """
        kid, kek = self.keys.current()
        path = self.inner.path(sha256)
        with self._open_raw(sha256) as fh:
            sealed = self._sealed(sha256, fh)
            if sealed is None:
                ref = self._put(fh, replace=True)  # the sealed file replaces the plaintext
                if ref.sha256 != sha256:
                    raise BlobIntegrityError(f"plaintext blob {sha256} does not match its name")
                return True
        header, dek = sealed
        if header.kid == kid:
            return False
        nonce = secrets.token_bytes(12)
        header.wrapped = AESGCM(kek).encrypt(nonce, dek, _wrap_aad(sha256, header.prefix,
                                                                   header.chunk_size))
        header.kid, header.wrap_nonce = kid, nonce
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, header.pack(), 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        return True

    @contextmanager
    def local_copy(self, sha256: str, directory: Path | None = None) -> Iterator[Path]:
        """A decrypted copy in ``directory`` (default: the store's scratch directory) for
        tools that need a file path (aligners, samtools); removed when the block ends, also
        on an error. Keep ``directory`` on the same protected volume as the data directory."""
        directory = self.scratch if directory is None else directory
        if not directory.exists():
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=directory, prefix=f".{sha256[:12]}-")
        path = Path(name)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as out:
                for piece in self.iter_bytes(sha256):
                    out.write(piece)
            yield path
        finally:
            path.unlink(missing_ok=True)

    def sweep_scratch(self, older_than: float = 24 * 3600.0) -> int:
        """Remove decrypted copies a crashed process left in the scratch directory.

        Only copies older than ``older_than`` seconds go: a copy in use by another process
        (a worker's tool) is younger than that. Returns how many were removed.
        """
        if not self.scratch.is_dir():
            return 0
        limit = time.time() - older_than
        removed = 0
        for leftover in self.scratch.glob(".*-*"):
            with suppress(OSError):
                if leftover.is_file() and leftover.stat().st_mtime < limit:
                    leftover.unlink()
                    removed += 1
        return removed

    def all_blobs(self) -> Iterator[str]:
        for path in self.inner.root.glob("??/??/*"):
            if len(path.name) == 64 and path.is_file():
                yield path.name


def encrypted_blob_store(root: Path, key_file: Path, *, scratch: Path | None = None
                         ) -> EncryptedBlobStore:
    """The encrypted store for a data directory: blobs under ``root``, KEKs in ``key_file``.

    The key file is read (or made, mode 0600, on first start) at once: a missing key, a file
    others can read or one that does not parse stops the process here with
    :class:`KeyProviderError`, before any blob is written.
    """
    provider = LocalKeyProvider(key_file)
    provider.current()
    store = EncryptedBlobStore(LocalBlobStore(root), provider, scratch=scratch)
    store.sweep_scratch()
    return store


def blob_key_file(data_dir: Path) -> Path:
    """Where the local key provider keeps its KEKs: beside the data, never inside blobs/."""
    return data_dir / "keys" / "blob.keys"


def blob_store_for(settings: Settings) -> EncryptedBlobStore:
    """The blob store of a deployment: every process (server, workers, CLI, demo) uses this
    one, so every blob is encrypted at rest. Decrypted working copies go to
    ``<data dir>/scratch``."""
    return encrypted_blob_store(settings.blob_dir, blob_key_file(settings.data_dir),
                                scratch=settings.data_dir / "scratch")
